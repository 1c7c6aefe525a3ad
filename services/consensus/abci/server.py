"""The ABCI socket server: CometBFT v0.38's wire protocol in plain asyncio.

Framing is that of CometBFT's ``libs/protoio`` delimited writer and reader: an unsigned
varint (``binary.PutUvarint``) giving the length, then a serialized
``tendermint.abci.Request`` or ``Response``. CometBFT opens four connections (query,
snapshot, mempool, consensus); each is an asyncio Protocol answering strictly in request
order, in the callback that received the request unless it must wait for the app (then a
task carries on, and the connection's later requests wait for it) or the connection has been
served for ``_SLICE_SECONDS`` (then the rest of its read waits one turn of the loop, so that the
consensus connection is not held behind the mempool's backlog). Responses are buffered and
written once a Flush has been answered (or the buffer fills), as CometBFT's own Go server does
with its bufio writer, except that the Flushes served together are written together
(``_serve``).

Application calls are serialized across all connections by one lock, as in CometBFT's
``SocketServer`` (its ``appMtx``): an ``async`` method that awaits mid-``finalize_block``
must not let a ``check_tx`` from the mempool connection observe half-applied state.

Any protocol error (a bad frame, an unknown request, an exception from the application) is
logged, answered with ``Response.exception`` and ends that connection. CometBFT stops on it,
which is the point: a consensus bug must halt the node, not be papered over.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError, Message
from tendermint.abci import types_pb2 as abci

from services.common.metrics import plain_counter
from services.consensus.abci.application import Application

log = logging.getLogger("rdx.consensus.abci")

_REQUEST_KINDS = [f.name for f in abci.Request.DESCRIPTOR.oneofs_by_name["value"].fields]
REQUESTS_SERVED = plain_counter("rdx_abci_requests", "ABCI requests served, by type", "type",
                                [*_REQUEST_KINDS, "unknown"])
"""ABCI requests served by this process, by type (``rdx_abci_requests_total``): CheckTx and its
Flush come thousands of times a second."""

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Far above any sane block (CometBFT caps a block at 100 MiB, its default at 4 MiB)."""

_MAX_VARINT_BYTES = 10  # Go's binary.MaxVarintLen64
_WRITE_BUFFER_BYTES = 64 * 1024  # written out early so an unflushed pipeline stays bounded
# The longest a connection is served before the others get their turn. Under load the mempool
# connection's reads hold hundreds of CheckTx (~100 ms of work); a PrepareProposal, FinalizeBlock or
# Commit behind such a read waited for all of it, and every tx CheckTx admitted meanwhile, after the
# proposal took the mempool's txs, was rechecked after the block (0.95 rechecks per committed tx).
_SLICE_SECONDS = 0.002
# CheckTx requests handed to the app ahead of serving them (``_look_ahead``): RdxApp's helper
# process verifies their signatures meanwhile. 64 are ~2 ms of this thread's CheckTx work (~34 us
# each with the helper); fewer than 8 at once are left to the app (a light load).
AHEAD_TXS, MIN_AHEAD_TXS = 64, 8
_MAX_ERROR_CHARS = 200

# Requests answered by the application; echo and flush are answered by the transport.
_APP_REQUESTS = frozenset({
    "info", "init_chain", "query", "check_tx", "commit",
    "list_snapshots", "offer_snapshot", "load_snapshot_chunk", "apply_snapshot_chunk",
    "prepare_proposal", "process_proposal", "extend_vote", "verify_vote_extension",
    "finalize_block",
})


class FrameError(Exception):
    """The byte stream is not a valid delimited frame; the connection cannot go on."""


class FrameTooLarge(FrameError):
    """A length prefix above the server's limit: refused before reading the body."""


def _uvarint(n: int) -> bytes:
    """``n`` as an unsigned varint (Go's ``PutUvarint``)."""
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length as an unsigned varint."""
    return _uvarint(len(payload)) + payload


def frame_bounds(buf: bytearray, at: int, max_frame_bytes: int) -> tuple[int, int] | None:
    """Where the payload of the frame starting at ``buf[at]`` lies, or None while it is incomplete.
    The length prefix mirrors Go's ``binary.ReadUvarint`` (at most 10 bytes, no overflow past 64
    bits); the size limit is checked before the body is waited for."""
    end = len(buf)
    if at < end and buf[at] < 0x80:  # a one-byte length: a Flush, most small requests
        length, start = buf[at], at + 1
    elif at + 1 < end and buf[at + 1] < 0x80:  # two bytes (under 16 KiB): a CheckTx
        length, start = (buf[at] & 0x7F) | buf[at + 1] << 7, at + 2
    else:
        length = 0
        for i in range(min(end - at, _MAX_VARINT_BYTES)):
            byte = buf[at + i]
            if byte < 0x80:
                if i == _MAX_VARINT_BYTES - 1 and byte > 1:
                    raise FrameError("frame length prefix overflows 64 bits")
                length |= byte << (7 * i)
                start = at + i + 1
                break
            length |= (byte & 0x7F) << (7 * i)
        else:
            if end - at >= _MAX_VARINT_BYTES:
                raise FrameError("frame length prefix overflows 64 bits")
            return None
    if length > max_frame_bytes:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the {max_frame_bytes}-byte limit")
    if end < start + length:
        return None
    return start, start + length


def _request_kind(payload: bytes) -> str | None:
    """The oneof field a serialized ``Request`` starts with (its first tag), if any."""
    tag, shift = 0, 0
    for byte in payload[:_MAX_VARINT_BYTES]:
        tag |= (byte & 0x7F) << shift
        if byte < 0x80:
            field = abci.Request.DESCRIPTOR.fields_by_number.get(tag >> 3)
            return field.name if field is not None else None
        shift += 7
    return None


_CHECK_TX_KEY = abci.Request.DESCRIPTOR.fields_by_name["check_tx"].number << 3 | 2  # its first byte
_FLUSH_FRAME = encode_frame(abci.Response(flush=abci.ResponseFlush()).SerializeToString())
_FLUSH_REQUEST = abci.Request(flush=abci.RequestFlush()).SerializeToString()


# Per request type answered by the application: the class it must answer with, and the key of that
# field in ``Response`` (field number, wire type 2). A response is framed from the answer's own
# serialization (key, length, bytes: what ``Response(<kind>=answer).SerializeToString()`` gives)
# instead of being copied into a ``Response`` and serialized again.
_RESPONSES: dict[str, tuple[type[Message], bytes]] = {
    kind: (getattr(abci, abci.Response.DESCRIPTOR.fields_by_name[kind].message_type.name),
           _uvarint(abci.Response.DESCRIPTOR.fields_by_name[kind].number << 3 | 2))
    for kind in _APP_REQUESTS
}


@dataclass
class ConnectionStats:
    """What one connection has asked for, by request type; plain, for a metrics exporter."""

    peer: str
    requests: Counter[str] = field(default_factory=Counter)


class _Connection(asyncio.Protocol):
    """One CometBFT connection: read a request, answer it, buffer until Flush.

    An asyncio Protocol rather than a stream reader and writer: a request is answered in the
    callback that received its bytes when the application answers at once (RdxApp's methods all
    do) and no other connection holds the application lock. Only a request that must wait (an
    ``async`` application method, or the lock held by another connection's) is handed to a task,
    and the connection's later requests wait for it, in order. With the streams, every read cost a
    future, a task step and another turn of the event loop; CometBFT flushes after almost every
    CheckTx under load, and that was about 40% of the server's CPU per CheckTx+Flush round trip."""

    def __init__(self, conn_id: int, app: Application, app_lock: asyncio.Lock, max_frame_bytes: int,
                 live: dict[int, "_Connection"]) -> None:
        self.id = conn_id
        self.stats = ConnectionStats(peer="?")
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._app, self._app_lock, self._max = app, app_lock, max_frame_bytes
        self._live = live
        self._in = bytearray()  # bytes received, from _at on not yet served
        self._at = 0
        self._ahead = 0  # where in _in the frames not yet looked ahead at (_look_ahead) start
        self._rehint = 0  # where in _in serving looks ahead again
        self._buffer = bytearray()  # responses not yet written
        self._flushed = False  # a Flush was answered: write the buffer once this read is served
        self._task: asyncio.Task[None] | None = None  # serving a request that had to wait
        self._later: asyncio.Handle | None = None  # serving the rest of a read after other connections
        self._closing = False
        self._write_paused = False
        self._read_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.stats.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._live[self.id] = self
        log.info("ABCI connection %d opened from %s", self.id, self.stats.peer)

    def data_received(self, data: bytes) -> None:
        self._in += data
        if self._task is None and self._later is None:
            self._serve()
        elif len(self._in) - self._at >= _WRITE_BUFFER_BYTES and not self._read_paused:
            self._pause_reading()  # bounded while a request waits; serving again resumes reading

    def eof_received(self) -> bool:
        if len(self._in) > self._at:
            log.warning("ABCI connection %d lost: %s", self.id, "IncompleteReadError")
        else:
            log.info("ABCI connection %d closed by %s", self.id, self.stats.peer)
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("ABCI connection %d lost: %s", self.id, type(exc).__name__)
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._later is not None:
            self._later.cancel()
        self._live.pop(self.id, None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume()

    # -- serving -------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Answer the complete frames received, in order, until one must wait for the app or
        ``_SLICE_SECONDS`` have passed (then the rest is served from the next turn of the loop)."""
        deadline = time.monotonic() + _SLICE_SECONDS
        while self._task is None and not self._closing and not self._write_paused:
            if self._at >= self._rehint:
                self._look_ahead()
            try:
                bounds = frame_bounds(self._in, self._at, self._max)
            except FrameError as exc:
                log.error("ABCI connection %d: %s", self.id, exc)
                self._fail(str(exc))
                return
            if bounds is None:
                break
            if time.monotonic() >= deadline:
                if self._later is None:
                    self._later = asyncio.get_running_loop().call_soon(self._serve_later)
                break
            start, self._at = bounds
            self._handle(bytes(self._in[start:self._at]))
        if self._flushed:
            # The Flushes answered above are written together, once what was received is served,
            # the slice is over or a request waits for the app. Under load one read holds hundreds
            # of CheckTx and dozens of Flushes, and a write each was ~8% of the app's CPU; a
            # response waits at most one slice, for requests its client had sent already.
            self._flushed = False
            self._flush()
        if self._at and (self._at == len(self._in) or self._at >= _WRITE_BUFFER_BYTES):
            del self._in[:self._at]  # not after each frame: a 64 KiB read holds hundreds
            self._ahead = max(0, self._ahead - self._at)
            self._rehint = max(0, self._rehint - self._at)
            self._at = 0

    def _look_ahead(self) -> None:
        """Hand the app the txs of the next ``AHEAD_TXS`` new CheckTx requests received
        (``verify_ahead``), so that it can start on them while it serves those before them; once
        half of them are served, the next ones follow. Fewer than ``MIN_AHEAD_TXS`` (a light load,
        requests arriving one by one) are not worth handing over. Only a hint: a frame that does
        not parse here is left to ``_serve`` to refuse."""
        at, txs, half = max(self._ahead, self._at), [], None
        while len(txs) < AHEAD_TXS:
            try:
                bounds = frame_bounds(self._in, at, self._max)
            except FrameError:
                break
            if bounds is None:
                break
            start, at = bounds
            if at > start and self._in[start] == _CHECK_TX_KEY:
                try:
                    check = abci.Request.FromString(bytes(self._in[start:at])).check_tx
                except DecodeError:
                    continue
                if check.type == abci.NEW:
                    txs.append(check.tx)
                    if len(txs) == AHEAD_TXS // 2:
                        half = at
        self._ahead = at
        self._rehint = at if half is None else half
        if len(txs) >= MIN_AHEAD_TXS and not self._app_lock.locked():
            try:
                self._app.verify_ahead(txs)
            except Exception as exc:  # a hint failing must not cost the node its connection
                log.error("ABCI connection %d: verify_ahead failed: %s", self.id, type(exc).__name__)

    def _handle(self, payload: bytes) -> None:
        if payload == _FLUSH_REQUEST:  # every other request under load: answered without parsing
            self.stats.requests["flush"] += 1
            REQUESTS_SERVED["flush"] += 1
            self._buffer += _FLUSH_FRAME
            self._flushed = True
            return
        try:
            request = abci.Request.FromString(payload)
        except DecodeError:
            if _request_kind(payload) == "query":
                # CometBFT passes a query path from RPC as it came, and its hex form can carry
                # bytes that are not UTF-8, which protobuf strings must be: answer, do not halt.
                REQUESTS_SERVED["query"] += 1
                self._send(abci.Response(query=self._app.undecodable_query()))
                return
            log.error("ABCI connection %d: undecodable request of %d bytes", self.id, len(payload))
            self._fail("undecodable request")
            return
        kind = request.WhichOneof("value") or "unknown"
        self.stats.requests[kind] += 1
        REQUESTS_SERVED[kind] += 1
        if kind == "flush":
            self._buffer += _FLUSH_FRAME
            self._flushed = True
        elif kind == "echo":
            self._send(abci.Response(echo=abci.ResponseEcho(message=request.echo.message)))
        elif kind in _APP_REQUESTS:
            req = getattr(request, kind)
            if self._app_lock.locked():  # another connection's request is awaiting the app
                self._task = asyncio.ensure_future(self._wait_for_app(kind, req, None))
                return
            try:
                result = getattr(self._app, kind)(req)
            except Exception as exc:
                self._app_failed(kind, exc)
                return
            if type(result) is not _RESPONSES[kind][0] and inspect.isawaitable(result):
                self._task = asyncio.ensure_future(self._wait_for_app(kind, req, result))  # started once it holds the lock
                return
            self._answer(kind, result)
        else:
            log.error("ABCI connection %d: unknown request type (%d bytes)", self.id, len(payload))
            self._fail("unknown request type")

    async def _wait_for_app(self, kind: str, req: Message, pending: Any) -> None:
        try:
            async with self._app_lock:
                result = getattr(self._app, kind)(req) if pending is None else pending
                pending = None
                if inspect.isawaitable(result):
                    result = await result
        except asyncio.CancelledError:
            if inspect.iscoroutine(pending):
                pending.close()  # never started: the connection went away first
            raise
        except Exception as exc:
            self._task = None
            self._app_failed(kind, exc)
            return
        self._task = None
        self._answer(kind, result)
        self._resume()

    def _answer(self, kind: str, result: Message) -> None:
        cls, key = _RESPONSES[kind]
        if type(result) is not cls:
            self._app_failed(kind, TypeError(f"answered with {type(result).__name__}, not {cls.__name__}"))
            return
        self._write(key + encode_frame(result.SerializeToString()))

    def _app_failed(self, kind: str, exc: Exception) -> None:
        log.error("ABCI connection %d: application failed on %s", self.id, kind, exc_info=exc)
        self._fail(f"{kind}: {type(exc).__name__}: {exc}")

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self._closing:
            self._read_paused = True
            self.transport.pause_reading()

    def _serve_later(self) -> None:
        self._later = None
        self._resume()

    def _resume(self) -> None:
        if self._closing or self._write_paused:
            return
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        self._serve()

    def _send(self, response: abci.Response) -> None:
        self._write(response.SerializeToString())

    def _write(self, response: bytes) -> None:
        """Buffer one serialized ``Response``."""
        self._buffer += encode_frame(response)
        if len(self._buffer) >= _WRITE_BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        # Hand the transport a buffer we never touch again (it may keep a view of it).
        data, self._buffer = self._buffer, bytearray()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, message: str) -> None:
        """Deliver what is buffered, then the exception, and close the connection."""
        exception = abci.Response(exception=abci.ResponseException(error=message[:_MAX_ERROR_CHARS]))
        self._buffer += encode_frame(exception.SerializeToString())
        self._flush()
        self._closing = True
        if self.transport is not None:
            self.transport.close()


class AbciServer:
    """Serves an ``Application`` to CometBFT over the ABCI socket transport."""

    def __init__(
        self,
        app: Application,
        host: str = "127.0.0.1",
        port: int = 26658,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self._app = app
        self._host = host
        self._requested_port = port
        self._max_frame_bytes = max_frame_bytes
        self._app_lock = asyncio.Lock()
        self._server: asyncio.Server | None = None
        self._live: dict[int, _Connection] = {}
        self._ids = itertools.count(1)
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bind and start accepting; loopback by default, since ABCI has no authentication."""
        if self._server is not None:
            raise RuntimeError("AbciServer already started")
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(next(self._ids), self._app, self._app_lock, self._max_frame_bytes, self._live),
            self._host, self._requested_port)
        log.info("ABCI server listening on %s:%d", self._host, self.port)

    @property
    def port(self) -> int:
        """The bound port, which differs from the requested one when that was 0."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("AbciServer is not listening")
        return self._server.sockets[0].getsockname()[1]

    @property
    def connections(self) -> dict[int, ConnectionStats]:
        """Stats of the open connections, by connection id."""
        return {conn_id: conn.stats for conn_id, conn in self._live.items()}

    async def serve_forever(self) -> None:
        """Start if needed, then return only once ``stop()`` has run."""
        if self._server is None:
            await self.start()
        await self._stopped.wait()

    async def stop(self) -> None:
        """Stop listening and drop every connection; CometBFT reconnects or halts on its side."""
        if self._server is not None:
            self._server.close()
        live = list(self._live.values())
        for conn in live:
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.gather(*(conn.closed for conn in live), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._stopped.set()
