"""The peer channel between compute nodes: one gRPC bidirectional stream per (job, pair of nodes).

gRPC carries opaque bytes here: the method is registered with a generic handler and no
(de)serialisers, and each message is one frame of handshake.py (a small JSON header and a
binary body, encrypted after the handshake). Why not a .proto with generated stubs: the
payloads are batches of 32-byte curve points that protobuf would only wrap as ``bytes``
anyway, the framing must be hashed and encrypted byte for byte (the transcript both nodes
attest), and no generated modules have to be kept in step with the protobuf runtime. The
service and method names are fixed (``/rdx.compute.v1.Peer/Session``), and the frames are
specified in docs/compute.md, so another implementation can speak it.

Which node dials: for a pair of members, the one whose member id sorts first connects, the
other accepts (deterministic for any number of parties). The accepting side admits a session
only for a job it has journaled, from a participant of that job whose node key, as registered
on chain for an active member, signed the handshake.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
import grpc.aio

from services.common.identity import Identity
from services.compute import handshake as hs
from services.compute.chainview import ChainUnavailable, ChainView
from services.compute.jobtypes.base import Message, NodeRef, PeerLost, PeerRefused, ProtocolError

log = logging.getLogger("rdx.compute.peer")

SERVICE = "rdx.compute.v1.Peer"
METHOD = f"/{SERVICE}/Session"
MAX_MESSAGE = 8 << 20
HANDSHAKE_TIMEOUT_S = 10.0
# A wait for a peer's next message this long is logged, again at each multiple, and goes on: the
# job's deadline bounds it, and a computation may rightly keep a peer silent longer (a 1M-row step).
SLOW_RECV_S = 60.0
CLIENT_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 200),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000), ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000),
]


class PeerUnavailable(Exception):
    """Not now: the peer is not reachable, or does not know the job yet. Worth retrying."""


# -- transports ------------------------------------------------------------------------------------

class _Transport:
    """Frames over a gRPC stream: a client's call or a server's context (both read and write)."""

    def __init__(self, stream):
        self.stream = stream

    async def read(self) -> bytes | None:
        msg = await self.stream.read()
        return None if msg is grpc.aio.EOF else msg

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)


class _ClientTransport(_Transport):
    def __init__(self, channel: grpc.aio.Channel, call):
        super().__init__(call)
        self.channel = channel

    async def close(self) -> None:
        self.stream.cancel()
        await self.channel.close(grace=None)


class _ServerTransport(_Transport):
    def __init__(self, context: grpc.aio.ServicerContext):
        super().__init__(context)
        self.closed = asyncio.Event()
        context.add_done_callback(lambda _: self.closed.set())

    async def close(self) -> None:
        self.closed.set()


# -- the channel a job type sees ---------------------------------------------------------------------

# What a stream raises once the other end has gone. grpc.aio.BaseError covers UsageError and
# InternalError, whose ExecuteBatchError a server's write raises after the client cancelled its call:
# uncaught, it made a peer's policy abort an "internal error" here, and this node's jobs.Fail raced
# the peer's jobs.Abort (CI of 2026-12-05, test_malicious_consumer's budgeted HE model).
_LOST = (grpc.aio.AioRpcError, grpc.aio.BaseError, RuntimeError, asyncio.InvalidStateError)


class SecureChannel:
    """Encrypted frames over one transport; keeps the running transcript of each direction."""

    def __init__(self, peer: str, keys: hs.SessionKeys, transport, *, job: str = "",
                 tap: Callable[[str, bytes], None] | None = None):
        self.peer, self.job = peer, job
        self._cipher = hs.FrameCipher(keys)
        self._transport = transport
        self._sent = hashlib.sha256(keys.session_id)
        self._received = hashlib.sha256(keys.session_id)
        self._lock = asyncio.Lock()
        self._tap = tap
        self.closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_received = 0

    async def send(self, kind: str, body: bytes = b"", **header: Any) -> None:
        frame = hs.encode(kind, header, body)
        async with self._lock:
            if self.closed:
                raise PeerLost(f"channel to {self.peer} is closed")
            self._sent.update(len(frame).to_bytes(8, "big"))
            self._sent.update(frame)
            sealed = self._cipher.seal(frame)
            try:
                await self._transport.write(sealed)
            except _LOST as exc:
                self.closed = True
                raise PeerLost(f"lost {self.peer} while sending ({_why(exc)})") from None
            self.bytes_sent += len(sealed)
        if self._tap:
            self._tap("sent", frame)

    async def recv(self) -> Message:
        if self.closed:
            raise PeerLost(f"channel to {self.peer} is closed")
        read = asyncio.ensure_future(self._transport.read())
        try:
            waited = 0.0
            while not (await asyncio.wait({read}, timeout=SLOW_RECV_S))[0]:  # the read is never cancelled here
                waited += SLOW_RECV_S
                log.warning("job %s: no message from %s for %.0f s on an open channel (%d frames, %d bytes "
                            "received; %d bytes sent); still waiting", self.job, self.peer, waited,
                            self.frames_received, self.bytes_received, self.bytes_sent)
            sealed = read.result()
        except _LOST as exc:
            self.closed = True
            raise PeerLost(f"lost {self.peer} ({_why(exc)})") from None
        finally:
            read.cancel()  # only if this task was cancelled (the kill switch, shutdown) while it waited
        return self.accept(sealed)

    def accept(self, sealed: bytes | None) -> Message:
        """Decrypt and account for one received frame (``None``: the stream ended)."""
        if sealed is None:
            self.closed = True
            raise PeerLost(f"{self.peer} closed the channel")
        self.bytes_received += len(sealed)
        self.frames_received += 1
        try:
            frame = self._cipher.open(sealed)
            kind, header, body = hs.decode(frame)
        except hs.FrameError as exc:
            self.closed = True
            raise ProtocolError(str(exc)) from None
        self._received.update(len(frame).to_bytes(8, "big"))
        self._received.update(frame)
        if self._tap:
            self._tap("received", frame)
        return Message(kind, header, body)

    def transcript(self) -> tuple[str, str]:
        return self._sent.copy().hexdigest(), self._received.copy().hexdigest()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
        try:
            await self._transport.close()
        except Exception:  # noqa: BLE001 - closing what may already be gone
            pass


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


# -- dialing -----------------------------------------------------------------------------------------

async def connect(identity: Identity, chain_id: str, chain: ChainView, job: str, peer: str, node: NodeRef,
                  *, tap: Callable[[str, bytes], None] | None = None) -> SecureChannel:
    """One attempt to open the channel to ``peer``'s node for ``job``.

    Raises PeerUnavailable (retry later), PeerRefused (it refused us, or it is not who the chain
    says), or PeerLost."""
    # The peer's key is read from the chain before the call opens: a verified read can take seconds
    # on a loaded node. Read between welcome and auth it ran out the peer's HANDSHAKE_TIMEOUT_S (which
    # the peer reports as failed authentication); read after the call opened, a dead peer's call had
    # finished by the hello (grpc's InvalidStateError, not a retry).
    try:
        key = await chain.node_key(peer, node.account)
    except ChainUnavailable as exc:
        raise PeerUnavailable(f"cannot check {peer}'s key on chain: {exc}") from None
    channel = grpc.aio.insecure_channel(node.endpoint, options=CLIENT_OPTIONS)
    call = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)()
    transport = _ClientTransport(channel, call)
    try:
        client = hs.ClientHandshake(identity, chain_id, job, node.account)
        await asyncio.wait_for(call.write(client.hello()), HANDSHAKE_TIMEOUT_S)
        welcome = await asyncio.wait_for(transport.read(), HANDSHAKE_TIMEOUT_S)
        if welcome is None:
            raise PeerUnavailable(f"{peer} closed the connection during the handshake")
        try:
            auth, keys = client.finish(welcome, key)
        except hs.HandshakeError as exc:
            raise PeerRefused(f"{peer}'s node failed authentication: {exc}") from None
        await asyncio.wait_for(call.write(auth), HANDSHAKE_TIMEOUT_S)
        chan = SecureChannel(peer, keys, transport, job=job, tap=tap)
        # Read the verdict ourselves: a refusal arrives as the RPC's status, handled below.
        ready = chan.accept(await asyncio.wait_for(transport.read(), HANDSHAKE_TIMEOUT_S))
        if ready.kind != "ready":
            raise ProtocolError(f"expected ready, got {ready.kind}")
        return chan
    except grpc.aio.AioRpcError as exc:
        await transport.close()
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
            raise PeerRefused(f"{peer}'s node refused the session: {exc.details()}") from None
        raise PeerUnavailable(f"{peer}'s node is unreachable ({code.name})") from None
    except PeerLost as exc:
        await transport.close()
        raise PeerUnavailable(str(exc)) from None
    except asyncio.InvalidStateError:  # grpc: a write on a call the peer's end already finished
        await transport.close()
        raise PeerUnavailable(f"{peer}'s node ended the session during the handshake") from None
    except asyncio.TimeoutError:
        await transport.close()
        raise PeerUnavailable(f"{peer}'s node did not answer the handshake in time") from None
    except BaseException:
        await transport.close()
        raise


# -- accepting ---------------------------------------------------------------------------------------

Admit = Callable[[str, str], str]  # (job, client node account) -> the client's member id, or raise


class SessionHub:
    """Sessions accepted by the server, waiting to be taken by the job that expects them.

    A newer session for the same (job, peer) replaces an older one (the peer reconnected after a
    failure we may not have noticed yet); the older one is closed, which its user sees as PeerLost.
    """

    def __init__(self):
        self._ready: dict[tuple[str, str], SecureChannel] = {}
        self._active: dict[tuple[str, str], SecureChannel] = {}
        self._changed = asyncio.Condition()

    async def deliver(self, job: str, peer: str, chan: SecureChannel) -> None:
        key = (job, peer)
        for old in (self._ready.pop(key, None), self._active.pop(key, None)):
            if old is not None:
                await old.close()
        async with self._changed:
            self._ready[key] = chan
            self._changed.notify_all()

    async def take(self, job: str, peer: str, timeout: float) -> SecureChannel:
        key = (job, peer)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: key in self._ready), timeout)
            except asyncio.TimeoutError:
                raise PeerLost(f"{peer}'s node did not connect within {timeout:.0f}s") from None
            chan = self._ready.pop(key)
            self._active[key] = chan
            return chan

    async def drop(self, job: str) -> None:
        """The job ended here: close whatever sessions it had."""
        for table in (self._ready, self._active):
            for key in [k for k in table if k[0] == job]:
                await table.pop(key).close()


class PeerServer:
    def __init__(self, identity: Identity, chain_id: str, chain: ChainView, hub: SessionHub, admit: Admit,
                 bind: str):
        self.identity, self.chain_id, self.chain, self.hub, self.admit = identity, chain_id, chain, hub, admit
        self.bind = bind
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self.refused = 0

    async def start(self) -> None:
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Session": grpc.stream_stream_rpc_method_handler(self._session, request_deserializer=None,
                                                             response_serializer=None)})
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port(self.bind)
        if not self.port:
            raise RuntimeError(f"the peer channel cannot listen on {self.bind}")
        await self._server.start()
        log.info("peer channel listening on %s", self.bind)

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)

    async def _refuse(self, context, code: grpc.StatusCode, why: str, client: str = "?") -> NoReturn:
        """Ends the RPC with ``code`` (``abort`` raises): the client sees the reason, we count and log it."""
        self.refused += 1
        log.warning("refused a peer session from %s: %s", client, why)
        await context.abort(code, why)

    async def _session(self, request_iterator, context: grpc.aio.ServicerContext) -> None:
        started = time.monotonic()
        try:
            first = await asyncio.wait_for(context.read(), HANDSHAKE_TIMEOUT_S)
            hello = hs.parse_hello(first if first is not grpc.aio.EOF else b"")
        except (asyncio.TimeoutError, hs.HandshakeError) as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad hello: {type(exc).__name__}")
            return
        if hello.chain_id != self.chain_id:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "wrong chain", hello.client)
        if hello.server != self.identity.account:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, f"this is {self.identity.account}",
                               hello.client)
        try:
            member = self.admit(hello.job, hello.client)
            key = await self.chain.node_key(member, hello.client)
        except PeerUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ChainUnavailable:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the chain cannot be reached to check the peer")
        except PeerRefused as exc:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(exc), hello.client)
        server = hs.ServerHandshake(self.identity, hello)
        await context.write(server.welcome())
        try:
            auth = await asyncio.wait_for(context.read(), HANDSHAKE_TIMEOUT_S)
            keys = server.finish(auth if auth is not grpc.aio.EOF else b"", key)
        except (asyncio.TimeoutError, hs.HandshakeError) as exc:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, f"authentication failed: {exc}", hello.client)
            return
        transport = _ServerTransport(context)
        chan = SecureChannel(member, keys, transport, job=hello.job)
        await chan.send("ready")
        log.info("peer session for job %s with %s established in %.0f ms", hello.job, hello.client,
                 (time.monotonic() - started) * 1000)
        await self.hub.deliver(hello.job, member, chan)
        await transport.closed.wait()  # the stream lives until the job closes it or the peer goes
