"""The ABCI socket server: CometBFT v0.38's wire protocol in plain asyncio.

Framing is that of CometBFT's ``libs/protoio`` delimited writer and reader: an unsigned
varint (``binary.PutUvarint``) giving the length, then a serialized
``tendermint.abci.Request`` or ``Response``. CometBFT opens four connections (query,
snapshot, mempool, consensus); each is served by its own task, reading one request at a
time and answering strictly in request order. Responses are buffered and written when a
Flush arrives (or the buffer fills), as CometBFT's own Go server does with its bufio writer.

Application calls are serialized across all connections by one lock, as in CometBFT's
``SocketServer`` (its ``appMtx``): an ``async`` method that awaits mid-``finalize_block``
must not let a ``check_tx`` from the mempool connection observe half-applied state.

Any protocol error (a bad frame, an unknown request, an exception from the application) is
logged, answered with ``Response.exception`` and ends that connection. CometBFT stops on it,
which is the point: a consensus bug must halt the node, not be papered over.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError, Message
from prometheus_client import Counter as PrometheusCounter
from tendermint.abci import types_pb2 as abci

from services.consensus.abci.application import Application

log = logging.getLogger("rdx.consensus.abci")
ABCI_REQUESTS = PrometheusCounter("rdx_abci_requests_total", "ABCI requests served, by type", ["type"])
# One labelled child per request type, looked up once: labels() costs more than the request's
# own framing, and CheckTx comes thousands of times a second.
_REQUEST_COUNTERS = {field.name: ABCI_REQUESTS.labels(field.name)
                     for field in abci.Request.DESCRIPTOR.oneofs_by_name["value"].fields}
_REQUEST_COUNTERS[None] = ABCI_REQUESTS.labels("unknown")

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""Far above any sane block (CometBFT caps a block at 100 MiB, its default at 4 MiB)."""

_MAX_VARINT_BYTES = 10  # Go's binary.MaxVarintLen64
_WRITE_BUFFER_BYTES = 64 * 1024  # written out early so an unflushed pipeline stays bounded
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


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length as an unsigned varint (Go's ``PutUvarint``)."""
    n = len(payload)
    prefix = bytearray()
    while n >= 0x80:
        prefix.append((n & 0x7F) | 0x80)
        n >>= 7
    prefix.append(n)
    return bytes(prefix) + payload


class FrameReader:
    """Frames from a stream, parsed out of a buffer filled by large reads.

    Reading the varint a byte at a time cost one await per byte: at thousands of CheckTx a
    second that was a visible share of the app's time. The length prefix mirrors Go's
    ``binary.ReadUvarint`` (at most 10 bytes, no overflow past 64 bits); the size limit is
    checked before the body is awaited.
    """

    def __init__(self, reader: asyncio.StreamReader, max_frame_bytes: int):
        self._reader, self._max = reader, max_frame_bytes
        self._buf = bytearray()

    async def next(self) -> bytes | None:
        """One frame's payload; ``None`` if the stream ends cleanly between frames. A stream
        that ends inside a frame raises ``asyncio.IncompleteReadError``."""
        while True:
            payload = self._parse()
            if payload is not None:
                return payload
            chunk = await self._reader.read(1 << 16)
            if not chunk:
                if self._buf:
                    raise asyncio.IncompleteReadError(bytes(self._buf), None)
                return None
            self._buf += chunk

    def _parse(self) -> bytes | None:
        buf, length = self._buf, 0
        for i in range(min(len(buf), _MAX_VARINT_BYTES)):
            byte = buf[i]
            if byte < 0x80:
                if i == _MAX_VARINT_BYTES - 1 and byte > 1:
                    raise FrameError("frame length prefix overflows 64 bits")
                length |= byte << (7 * i)
                header = i + 1
                break
            length |= (byte & 0x7F) << (7 * i)
        else:
            if len(buf) >= _MAX_VARINT_BYTES:
                raise FrameError("frame length prefix overflows 64 bits")
            return None
        if length > self._max:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the {self._max}-byte limit")
        if len(buf) < header + length:
            return None
        payload = bytes(buf[header:header + length])
        del buf[:header + length]
        return payload


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


_FLUSH_FRAME = encode_frame(abci.Response(flush=abci.ResponseFlush()).SerializeToString())


@dataclass
class ConnectionStats:
    """What one connection has asked for, by request type; plain, for a metrics exporter."""

    peer: str
    requests: Counter[str] = field(default_factory=Counter)


class _Connection:
    """One CometBFT connection: read a request, answer it, buffer until Flush."""

    def __init__(
        self,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        app: Application,
        app_lock: asyncio.Lock,
        max_frame_bytes: int,
    ) -> None:
        self.id = conn_id
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.stats = ConnectionStats(peer=f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer))
        self._frames = FrameReader(reader, max_frame_bytes)
        self._app = app
        self._app_lock = app_lock
        self._buffer = bytearray()

    async def run(self) -> None:
        """Serve requests until the peer closes or a protocol error ends the connection."""
        while True:
            try:
                payload = await self._frames.next()
            except FrameError as exc:
                log.error("ABCI connection %d: %s", self.id, exc)
                await self._fail(str(exc))
                return
            if payload is None:
                log.info("ABCI connection %d closed by %s", self.id, self.stats.peer)
                return
            try:
                request = abci.Request.FromString(payload)
            except DecodeError:
                if _request_kind(payload) == "query":
                    # CometBFT passes a query path from RPC as it came, and its hex form can carry
                    # bytes that are not UTF-8, which protobuf strings must be: answer, do not halt.
                    _REQUEST_COUNTERS["query"].inc()
                    await self._send(abci.Response(query=self._app.undecodable_query()))
                    continue
                log.error("ABCI connection %d: undecodable request of %d bytes", self.id, len(payload))
                await self._fail("undecodable request")
                return
            kind = request.WhichOneof("value")
            self.stats.requests[kind or "unknown"] += 1
            _REQUEST_COUNTERS[kind].inc()
            if kind == "flush":
                self._buffer += _FLUSH_FRAME
                await self._flush()
            elif kind == "echo":
                await self._send(abci.Response(echo=abci.ResponseEcho(message=request.echo.message)))
            elif kind in _APP_REQUESTS:
                try:
                    response = await self._call_app(kind, getattr(request, kind))
                except Exception as exc:
                    log.exception("ABCI connection %d: application failed on %s", self.id, kind)
                    await self._fail(f"{kind}: {type(exc).__name__}: {exc}")
                    return
                await self._send(response)
            else:
                log.error("ABCI connection %d: unknown request type (%d bytes)", self.id, len(payload))
                await self._fail("unknown request type")
                return

    async def _call_app(self, kind: str, req: Message) -> abci.Response:
        async with self._app_lock:
            result = getattr(self._app, kind)(req)
            if inspect.isawaitable(result):
                result = await result
        response = abci.Response()
        getattr(response, kind).CopyFrom(result)  # TypeError if the app returned the wrong type
        return response

    async def _send(self, response: abci.Response) -> None:
        self._buffer += encode_frame(response.SerializeToString())
        if len(self._buffer) >= _WRITE_BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        # Hand the transport a buffer we never touch again (it may keep a view of it).
        data, self._buffer = self._buffer, bytearray()
        if data:
            self.writer.write(data)
        await self.writer.drain()

    async def _fail(self, message: str) -> None:
        """Deliver what is buffered, then the exception; the caller closes the connection."""
        exception = abci.Response(exception=abci.ResponseException(error=message[:_MAX_ERROR_CHARS]))
        self._buffer += encode_frame(exception.SerializeToString())
        with contextlib.suppress(ConnectionError):
            await self._flush()


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
        self._live: dict[int, tuple[_Connection, asyncio.Task[None]]] = {}
        self._ids = itertools.count(1)
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Bind and start accepting; loopback by default, since ABCI has no authentication."""
        if self._server is not None:
            raise RuntimeError("AbciServer already started")
        self._server = await asyncio.start_server(self._on_connection, self._host, self._requested_port)
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
        return {conn_id: conn.stats for conn_id, (conn, _) in self._live.items()}

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
        for conn, task in live:
            conn.writer.transport.abort()
            task.cancel()
        await asyncio.gather(*(task for _, task in live), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._stopped.set()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(next(self._ids), reader, writer, self._app, self._app_lock, self._max_frame_bytes)
        task = asyncio.current_task()
        assert task is not None  # asyncio runs this callback in its own task
        self._live[conn.id] = (conn, task)
        log.info("ABCI connection %d opened from %s", conn.id, conn.stats.peer)
        try:
            await conn.run()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            log.warning("ABCI connection %d lost: %s", conn.id, type(exc).__name__)
        finally:
            del self._live[conn.id]
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
