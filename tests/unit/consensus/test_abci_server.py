"""The ABCI socket server over real loopback sockets, driven by a tiny client written here.

The client frames requests with its own varint code, so the server's framing is checked
against an independent implementation and against the protobuf spec's known encodings.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from tendermint.abci import types_pb2 as abci

from services.consensus.abci import AbciServer, Application, FrameError, encode_frame, frame_bounds
from services.consensus.abci import server as server_module
from services.consensus.abci.application import proto_tx_size

pytestmark = pytest.mark.unit

TIMEOUT = 5.0


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def framed(payload: bytes) -> bytes:
    return uvarint(len(payload)) + payload


def req(**kwargs) -> abci.Request:
    return abci.Request(**kwargs)


FLUSH = req(flush=abci.RequestFlush())


class Client:
    """Writes framed requests, reads framed responses; nothing buffered on this side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, *messages: abci.Request | bytes) -> None:
        for m in messages:
            self.writer.write(m if isinstance(m, bytes) else framed(m.SerializeToString()))
        await self.writer.drain()

    async def recv(self) -> abci.Response:
        async def _read() -> abci.Response:
            length, shift = 0, 0
            while True:
                b = (await self.reader.readexactly(1))[0]
                length |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    break
            return abci.Response.FromString(await self.reader.readexactly(length))

        return await asyncio.wait_for(_read(), TIMEOUT)

    async def recv_kinds(self, n: int) -> list[str]:
        return [(await self.recv()).WhichOneof("value") for _ in range(n)]

    async def assert_closed(self) -> None:
        assert await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""

    async def assert_silent(self, seconds: float = 0.2) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(self.reader.read(1), seconds)


@pytest.fixture
async def serve():
    servers: list[AbciServer] = []

    async def _serve(app: Application | None = None, **kwargs) -> AbciServer:
        s = AbciServer(app or Application(), port=0, **kwargs)
        await s.start()
        servers.append(s)
        return s

    yield _serve
    for s in servers:
        await s.stop()


@pytest.fixture
async def connect():
    clients: list[Client] = []

    async def _connect(s: AbciServer) -> Client:
        c = Client(*await asyncio.open_connection("127.0.0.1", s.port))
        clients.append(c)
        return c

    yield _connect
    for c in clients:
        c.writer.close()


# --- framing ---------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "prefix"), [
    (0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"),
    (16383, "ff7f"), (16384, "808001"), (2_097_151, "ffff7f"), (2_097_152, "80808001"),
])
def test_length_prefix_is_the_protobuf_uvarint(n: int, prefix: str) -> None:
    frame = encode_frame(b"x" * n)
    assert frame[: len(prefix) // 2].hex() == prefix
    assert frame == framed(b"x" * n)


def test_frames_are_found_across_varint_boundaries_and_every_cut() -> None:
    sizes = [0, 1, 127, 128, 129, 255, 16383, 16384, 16385, 70_000]
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    stream = bytearray(b"".join(encode_frame(p) for p in payloads))
    at = 0
    for p in payloads:
        start, end = frame_bounds(stream, at, 1 << 20)
        assert bytes(stream[start:end]) == p
        for cut in range(at, end):  # any shorter buffer holds an incomplete frame
            if cut - at <= 4 or end - cut <= 4:
                assert frame_bounds(stream[:cut], at, 1 << 20) is None
        at = end
    assert frame_bounds(stream, at, 1 << 20) is None  # nothing after the last frame


@pytest.mark.parametrize("prefix", [b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x02"])
def test_a_prefix_beyond_64_bits_is_refused(prefix: bytes) -> None:
    with pytest.raises(FrameError):
        frame_bounds(bytearray(prefix), 0, 1 << 20)


@pytest.mark.parametrize("length", [128, 16_384, 1 << 21])
def test_a_length_above_the_limit_is_refused_before_the_body(length: int) -> None:
    with pytest.raises(server_module.FrameTooLarge):
        frame_bounds(bytearray(encode_frame(b"x" * length)[:-length]), 0, length - 1)


@pytest.mark.parametrize("size", [5, 127, 128, 200, 16383, 16384, 20_000])
async def test_echo_round_trips_through_the_socket(serve, connect, size: int) -> None:
    c = await connect(await serve())
    message = "e" * size
    await c.send(req(echo=abci.RequestEcho(message=message)), FLUSH)
    assert (await c.recv()).echo.message == message
    assert (await c.recv()).WhichOneof("value") == "flush"


# --- ordering and flushing ---------------------------------------------------------------

async def test_pipelined_batch_is_answered_in_order_at_flush(serve, connect) -> None:
    c = await connect(await serve())
    batch = [
        req(echo=abci.RequestEcho(message="first")),
        req(info=abci.RequestInfo()),
        req(check_tx=abci.RequestCheckTx(tx=b"t1")),
        req(query=abci.RequestQuery(path="/x")),
        req(prepare_proposal=abci.RequestPrepareProposal(txs=[b"a", b"b"], max_tx_bytes=100)),
        req(echo=abci.RequestEcho(message="last")),
        FLUSH,
    ]
    await c.send(*batch)
    responses = [await c.recv() for _ in batch]
    assert [r.WhichOneof("value") for r in responses] == [m.WhichOneof("value") for m in batch]
    assert responses[0].echo.message == "first"
    assert list(responses[4].prepare_proposal.txs) == [b"a", b"b"]
    assert responses[5].echo.message == "last"


async def test_no_response_is_written_before_flush(serve, connect) -> None:
    c = await connect(await serve())
    await c.send(req(echo=abci.RequestEcho(message="held")), req(info=abci.RequestInfo()))
    await c.assert_silent()
    await c.send(FLUSH)
    assert await c.recv_kinds(3) == ["echo", "info", "flush"]


class RecordingTransport(asyncio.Transport):
    """Keeps what the server writes, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


def responses_of(data: bytes) -> list[abci.Response]:
    out, at = [], 0
    while at < len(data):
        start, end = server_module.frame_bounds(bytearray(data), at, 1 << 20)
        out.append(abci.Response.FromString(data[start:end]))
        at = end
    return out


async def test_the_flushes_of_one_read_are_written_together_in_order(monkeypatch) -> None:
    # One slice for the whole read, whatever the machine's load: on a busy CI machine 50 CheckTx
    # outlasted the 2 ms slice and the rest came one turn later, in a second write. Slicing itself
    # is what test_a_long_read_is_served_in_slices_... checks.
    monkeypatch.setattr(server_module, "_SLICE_SECONDS", 60.0)
    conn = server_module._Connection(1, Application(), asyncio.Lock(), 1 << 20, {})
    transport = RecordingTransport()
    conn.connection_made(transport)
    pairs = [req(check_tx=abci.RequestCheckTx(tx=f"t{i}".encode())) for i in range(50)]
    conn.data_received(b"".join(framed(m.SerializeToString()) for p in pairs for m in (p, FLUSH)))
    assert len(transport.writes) == 1
    assert [r.WhichOneof("value") for r in responses_of(transport.writes[0])] == ["check_tx", "flush"] * 50
    conn.data_received(framed(req(echo=abci.RequestEcho(message="held")).SerializeToString()))
    assert len(transport.writes) == 1  # no Flush in that read: nothing written
    conn.data_received(framed(FLUSH.SerializeToString()))
    assert [r.WhichOneof("value") for r in responses_of(transport.writes[1])] == ["echo", "flush"]


async def test_a_response_is_framed_as_protobuf_frames_the_whole_response(monkeypatch) -> None:
    monkeypatch.setattr(server_module, "_SLICE_SECONDS", 60.0)  # one write, as above
    answers = {"check_tx": abci.ResponseCheckTx(code=7, log="no", gas_wanted=3),
               "finalize_block": abci.ResponseFinalizeBlock(app_hash=b"h" * 32,
                                                            tx_results=[abci.ExecTxResult(code=1, data=b"d" * 200)]),
               "commit": abci.ResponseCommit()}

    class Fixed(Application):
        def check_tx(self, req):
            return answers["check_tx"]

        def finalize_block(self, req):
            return answers["finalize_block"]

        def commit(self, req):
            return answers["commit"]

    conn = server_module._Connection(1, Fixed(), asyncio.Lock(), 1 << 20, {})
    transport = RecordingTransport()
    conn.connection_made(transport)
    conn.data_received(b"".join(framed(m.SerializeToString()) for m in (
        req(check_tx=abci.RequestCheckTx(tx=b"t")), req(finalize_block=abci.RequestFinalizeBlock(height=1)),
        req(commit=abci.RequestCommit()), FLUSH)))
    expected = b"".join(framed(abci.Response(**{k: v}).SerializeToString()) for k, v in answers.items())
    assert transport.writes == [expected + framed(abci.Response(flush=abci.ResponseFlush()).SerializeToString())]


async def test_a_long_read_is_served_in_slices_so_another_connection_is_not_held_behind_it(serve, connect) -> None:
    """The mempool connection's read of hundreds of CheckTx must not hold a consensus request
    (PrepareProposal, FinalizeBlock, Commit) until all of them are answered."""
    import time as clock

    checked: list[bytes] = []
    checked_before_info: list[int] = []

    class Busy(Application):
        def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
            clock.sleep(0.0005)  # CPU-bound work, as far as the event loop can tell
            checked.append(req.tx)
            return abci.ResponseCheckTx(code=0)

        def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
            checked_before_info.append(len(checked))
            return abci.ResponseInfo(last_block_height=len(checked))

    s = await serve(Busy())
    mempool, consensus = await connect(s), await connect(s)
    txs = [req(check_tx=abci.RequestCheckTx(tx=f"t{i}".encode())) for i in range(400)]
    await mempool.send(b"".join(framed(m.SerializeToString()) for m in (*txs, FLUSH)))
    await consensus.send(req(info=abci.RequestInfo()), FLUSH)
    assert (await consensus.recv()).WhichOneof("value") == "info"
    assert checked_before_info[0] < 400
    assert await mempool.recv_kinds(401) == ["check_tx"] * 400 + ["flush"]  # all of it, in order
    assert checked == [m.check_tx.tx for m in txs]


async def test_a_full_buffer_is_written_without_flush(serve, connect) -> None:
    c = await connect(await serve())
    big = "b" * (server_module._WRITE_BUFFER_BYTES // 2 + 1)
    await c.send(req(echo=abci.RequestEcho(message=big)), req(echo=abci.RequestEcho(message=big)))
    assert [(await c.recv()).echo.message for _ in range(2)] == [big, big]


# --- connections ---------------------------------------------------------------------------

async def test_four_connections_are_served_independently(serve, connect) -> None:
    s = await serve()
    clients = [await connect(s) for _ in range(4)]
    for i, c in enumerate(clients):
        await c.send(req(echo=abci.RequestEcho(message=f"conn{i}")), req(check_tx=abci.RequestCheckTx(tx=b"t")))
    for c in clients:
        await c.assert_silent(0.05)
    for i, c in reversed(list(enumerate(clients))):
        await c.send(FLUSH)
        assert (await c.recv()).echo.message == f"conn{i}"
        assert await c.recv_kinds(2) == ["check_tx", "flush"]
    stats = s.connections
    assert len(stats) == 4
    assert all(st.requests == {"echo": 1, "check_tx": 1, "flush": 1} for st in stats.values())


async def test_a_failing_connection_leaves_the_others_running(serve, connect) -> None:
    s = await serve()
    bad, good = await connect(s), await connect(s)
    await bad.send(framed(b"\xff\xff\xff"))
    assert (await bad.recv()).WhichOneof("value") == "exception"
    await bad.assert_closed()
    await good.send(req(info=abci.RequestInfo()), FLUSH)
    assert await good.recv_kinds(2) == ["info", "flush"]
    assert len(s.connections) == 1


async def test_echo_is_answered_while_another_connection_waits_on_the_app(serve, connect) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    class Slow(Application):
        async def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
            entered.set()
            await release.wait()
            return abci.ResponseFinalizeBlock(app_hash=b"h" * 32)

    s = await serve(Slow())
    consensus, query = await connect(s), await connect(s)
    await consensus.send(req(finalize_block=abci.RequestFinalizeBlock(height=1)), FLUSH)
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    await query.send(req(echo=abci.RequestEcho(message="ping")), FLUSH)
    assert await query.recv_kinds(2) == ["echo", "flush"]
    release.set()
    assert (await consensus.recv()).finalize_block.app_hash == b"h" * 32


async def test_application_calls_never_overlap_across_connections(serve, connect) -> None:
    active, overlaps = 0, 0

    class Yielding(Application):
        async def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
            nonlocal active, overlaps
            active += 1
            overlaps += active > 1
            await asyncio.sleep(0.01)
            active -= 1
            return abci.ResponseCheckTx(code=0)

    s = await serve(Yielding())
    clients = [await connect(s) for _ in range(4)]
    for c in clients:
        await c.send(*[req(check_tx=abci.RequestCheckTx(tx=b"t"))] * 3, FLUSH)
    for c in clients:
        assert await c.recv_kinds(4) == ["check_tx"] * 3 + ["flush"]
    assert overlaps == 0


async def test_stop_closes_listener_and_connections(serve, connect) -> None:
    s = await serve()
    c = await connect(s)
    port = s.port
    done = asyncio.create_task(s.serve_forever())
    await s.stop()
    await c.assert_closed()
    await asyncio.wait_for(done, TIMEOUT)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_port_is_unknown_before_start() -> None:
    with pytest.raises(RuntimeError):
        _ = AbciServer(Application(), port=0).port


# --- protocol errors -----------------------------------------------------------------------

async def test_oversize_frame_gets_an_exception_and_a_closed_connection(serve, connect, caplog) -> None:
    c = await connect(await serve(max_frame_bytes=1024))
    with caplog.at_level(logging.ERROR, logger="rdx.consensus.abci"):
        await c.send(uvarint(2048))  # only the prefix: the body must never be awaited
        response = await c.recv()
        await c.assert_closed()
    assert "exceeds" in response.exception.error
    assert "2048" in caplog.text


async def test_frame_at_the_limit_is_accepted(serve, connect) -> None:
    echo = req(echo=abci.RequestEcho(message="m" * 1000)).SerializeToString()
    c = await connect(await serve(max_frame_bytes=len(echo)))
    await c.send(framed(echo), FLUSH)
    assert await c.recv_kinds(2) == ["echo", "flush"]


@pytest.mark.parametrize(("payload", "error"), [
    (b"\xff\xff\xff", "undecodable request"),
    (b"", "unknown request type"),  # an empty Request carries no value
    (uvarint(99 << 3) + b"\x01", "unknown request type"),  # a field number ABCI does not define
])
async def test_bad_request_gets_an_exception_and_a_closed_connection(
    serve, connect, payload: bytes, error: str
) -> None:
    c = await connect(await serve())
    await c.send(framed(payload))
    assert (await c.recv()).exception.error == error
    await c.assert_closed()


async def test_application_exception_is_reported_after_earlier_responses(serve, connect, caplog) -> None:
    class Broken(Application):
        def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
            raise ValueError("state corrupted")

    c = await connect(await serve(Broken()))
    with caplog.at_level(logging.ERROR, logger="rdx.consensus.abci"):
        await c.send(req(echo=abci.RequestEcho(message="before")), req(check_tx=abci.RequestCheckTx(tx=b"SECRET-TX")))
        assert (await c.recv()).echo.message == "before"
        error = (await c.recv()).exception.error
        await c.assert_closed()
    assert error == "check_tx: ValueError: state corrupted"
    assert "application failed on check_tx" in caplog.text
    assert "SECRET-TX" not in caplog.text


async def test_wrong_response_type_from_the_app_is_an_exception(serve, connect) -> None:
    class Confused(Application):
        def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
            return abci.ResponseQuery()  # type: ignore[return-value]

    c = await connect(await serve(Confused()))
    await c.send(req(info=abci.RequestInfo()), FLUSH)
    assert "TypeError" in (await c.recv()).exception.error
    await c.assert_closed()


# --- the application -----------------------------------------------------------------------

async def test_async_application_method_is_awaited(serve, connect) -> None:
    class Async(Application):
        async def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
            await asyncio.sleep(0)
            return abci.ResponseFinalizeBlock(
                tx_results=[abci.ExecTxResult(code=0, data=tx) for tx in req.txs], app_hash=b"\x01" * 32
            )

    c = await connect(await serve(Async()))
    await c.send(req(finalize_block=abci.RequestFinalizeBlock(height=7, txs=[b"a", b"b"])), FLUSH)
    response = (await c.recv()).finalize_block
    assert [r.data for r in response.tx_results] == [b"a", b"b"]
    assert response.app_hash == b"\x01" * 32


def test_defaults_follow_the_spec() -> None:
    app = Application()
    assert app.offer_snapshot(abci.RequestOfferSnapshot()).result == abci.ResponseOfferSnapshot.ABORT
    assert app.apply_snapshot_chunk(abci.RequestApplySnapshotChunk()).result == abci.ResponseApplySnapshotChunk.ABORT
    assert not app.list_snapshots(abci.RequestListSnapshots()).snapshots
    assert app.process_proposal(abci.RequestProcessProposal()).status == abci.ResponseProcessProposal.ACCEPT
    assert app.verify_vote_extension(abci.RequestVerifyVoteExtension()).status == abci.ResponseVerifyVoteExtension.ACCEPT
    assert app.extend_vote(abci.RequestExtendVote()).vote_extension == b""
    finalized = app.finalize_block(abci.RequestFinalizeBlock(txs=[b"a", b"b", b"c"]))
    assert [r.code for r in finalized.tx_results] == [0, 0, 0]


def test_prepare_proposal_counts_txs_as_cometbft_does() -> None:
    # CometBFT's Txs.Validate counts each tx as in Data: tag + varint length + bytes.
    assert proto_tx_size(b"x" * 127) == 129
    assert proto_tx_size(b"x" * 128) == 131
    txs = [b"a" * 10, b"b" * 10, b"c" * 1, b"d" * 10]
    proposal = Application().prepare_proposal(abci.RequestPrepareProposal(txs=txs, max_tx_bytes=24))
    assert list(proposal.txs) == txs[:2]  # 12 + 12; the small third still must not jump the queue
    assert len(abci.RequestPrepareProposal(txs=proposal.txs).SerializeToString()) <= 24


async def test_a_query_whose_path_is_not_utf8_is_answered_and_the_connection_goes_on(serve, connect) -> None:
    # CometBFT's RPC takes a hex path (abci_query?path=0x2fff) and passes the bytes on; protobuf
    # cannot parse them as a string, so the server must answer from the frame's first tag alone.
    query = b"\x12\x02/\xff"  # RequestQuery{path: "/\xff"}
    c = await connect(await serve())
    await c.send(framed(b"\x32" + uvarint(len(query)) + query), req(echo=abci.RequestEcho(message="after")), FLUSH)
    answer = await c.recv()
    assert answer.WhichOneof("value") == "query" and answer.query.code != 0 and "UTF-8" in answer.query.log
    assert (await c.recv()).echo.message == "after"


async def test_requests_behind_one_that_waits_for_the_app_are_held_then_answered_in_order(serve, connect) -> None:
    """A connection whose request waits (here, the lock held by another connection's async call)
    keeps what arrives behind it, stops reading past its bound, and answers all of it in order,
    byte-split frames included, once the app is free."""
    entered, release = asyncio.Event(), asyncio.Event()
    checked: list[bytes] = []

    class Slow(Application):
        async def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
            entered.set()
            await release.wait()
            return abci.ResponseFinalizeBlock(app_hash=b"h" * 32)

        def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
            checked.append(req.tx)
            return abci.ResponseCheckTx(code=0, log=req.tx.decode())

    s = await serve(Slow())
    consensus, mempool = await connect(s), await connect(s)
    await consensus.send(req(finalize_block=abci.RequestFinalizeBlock(height=1)), FLUSH)
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    txs = [f"tx-{i:05d}-".encode() + b"p" * 300 for i in range(1000)]  # ~320 KB: past the read bound
    stream = b"".join(framed(req(check_tx=abci.RequestCheckTx(tx=t)).SerializeToString()) for t in txs)
    stream += framed(FLUSH.SerializeToString())
    for i in range(0, len(stream), 7919):  # cut mid-frame and mid-prefix
        mempool.writer.write(stream[i:i + 7919])
    await mempool.writer.drain()
    await mempool.assert_silent()
    assert checked == []  # nothing reached the app while another call held it
    release.set()
    assert (await consensus.recv()).finalize_block.app_hash == b"h" * 32
    answers = [await mempool.recv() for _ in range(len(txs) + 1)]
    assert [a.check_tx.log for a in answers[:-1]] == [t.decode() for t in txs]
    assert answers[-1].WhichOneof("value") == "flush"
    assert checked == txs


class Hinted(Application):
    """Records the hints (``verify_ahead``) and the CheckTx calls, in the order they came."""

    def __init__(self, fail_hint: bool = False) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.fail_hint = fail_hint

    def verify_ahead(self, txs: list[bytes]) -> None:
        self.calls += [("ahead", t) for t in txs]
        if self.fail_hint:
            raise RuntimeError("a bug in the hint")

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        self.calls.append(("check", req.tx))
        return abci.ResponseCheckTx(code=0)


def hinted_stream(n: int) -> tuple[bytes, list[bytes]]:
    new = [f"new-{i}".encode() * 3 for i in range(n)]
    stream = b""
    for i, t in enumerate(new):
        stream += framed(req(check_tx=abci.RequestCheckTx(tx=t)).SerializeToString())
        stream += framed(req(check_tx=abci.RequestCheckTx(tx=b"re-%d" % i, type=abci.RECHECK)).SerializeToString())
        stream += framed(FLUSH.SerializeToString())
    return stream, new


@pytest.mark.parametrize("cut", [7, 64, 1000, 1 << 20])
async def test_new_check_txs_are_hinted_at_most_once_in_order_before_they_are_served(cut: int, monkeypatch) -> None:
    if cut != 1 << 20:  # reads served whole as they come, whatever the machine's load (one read: sliced)
        monkeypatch.setattr(server_module, "_SLICE_SECONDS", 60.0)
    app = Hinted()
    conn = server_module._Connection(1, app, asyncio.Lock(), 1 << 20, {})
    conn.connection_made(RecordingTransport())
    stream, new = hinted_stream(200)
    for i in range(0, len(stream), cut):  # frames and length prefixes cut anywhere
        conn.data_received(stream[i:i + cut])
    await asyncio.sleep(0.05)  # slices of a long read are served on later turns of the loop
    hinted = [t for kind, t in app.calls if kind == "ahead"]
    assert len(set(hinted)) == len(hinted) and hinted == [t for t in new if t in hinted]  # never a recheck
    for t in hinted:
        assert app.calls.index(("ahead", t)) < app.calls.index(("check", t))
    assert len([c for c in app.calls if c[0] == "check"]) == 400
    if cut >= 1000:  # reads of many requests: each is hinted
        assert hinted == new
    if cut == 1 << 20:  # all in one read: a batch at a time
        batches = [len(list(g)) for k, g in itertools.groupby(app.calls, key=lambda c: c[0]) if k == "ahead"]
        assert set(batches) == {server_module.AHEAD_TXS, 200 % server_module.AHEAD_TXS}


async def test_requests_arriving_one_by_one_are_not_hinted() -> None:
    app = Hinted()
    conn = server_module._Connection(1, app, asyncio.Lock(), 1 << 20, {})
    conn.connection_made(RecordingTransport())
    stream, new = hinted_stream(1)
    for _ in range(20):
        conn.data_received(stream)
    assert [kind for kind, _ in app.calls] == ["check"] * 40


async def test_a_failing_hint_is_logged_and_the_requests_are_served_all_the_same(caplog) -> None:
    app = Hinted(fail_hint=True)
    conn = server_module._Connection(1, app, asyncio.Lock(), 1 << 20, {})
    transport = RecordingTransport()
    conn.connection_made(transport)
    stream, new = hinted_stream(20)
    conn.data_received(stream)
    await asyncio.sleep(0.05)
    assert [r.WhichOneof("value") for w in transport.writes for r in responses_of(w)] == ["check_tx", "check_tx", "flush"] * 20
    assert "verify_ahead failed: RuntimeError" in caplog.text and "new-" not in caplog.text


async def test_a_check_tx_frame_that_does_not_parse_is_not_hinted_and_is_refused_when_served(monkeypatch) -> None:
    """A frame with CheckTx's first byte and a body that is not a Request: the look-ahead skips it,
    the requests before it are answered, and serving refuses it and ends the connection."""
    monkeypatch.setattr(server_module, "_SLICE_SECONDS", 60.0)
    app = Hinted()
    conn = server_module._Connection(1, app, asyncio.Lock(), 1 << 20, {})

    class Closable(RecordingTransport):
        def close(self) -> None:
            self.closed = True

    transport = Closable()
    conn.connection_made(transport)
    good = [f"good-{i}".encode() for i in range(20)]
    broken = bytes([server_module._CHECK_TX_KEY, 0x05]) + b"ab"  # claims 5 bytes, holds 2
    stream = b"".join(framed(req(check_tx=abci.RequestCheckTx(tx=t)).SerializeToString()) for t in good)
    stream += framed(broken) + framed(req(check_tx=abci.RequestCheckTx(tx=b"after")).SerializeToString())
    conn.data_received(stream + framed(FLUSH.SerializeToString()))
    assert [t for kind, t in app.calls if kind == "ahead"] == good + [b"after"]
    answers = [r.WhichOneof("value") for w in transport.writes for r in responses_of(w)]
    assert answers == ["check_tx"] * 20 + ["exception"]
    assert ("check", b"after") not in app.calls and transport.closed
