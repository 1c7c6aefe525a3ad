"""A load generator for a CometBFT node that does not itself become the bottleneck.

Every transaction is built before the clock starts; each becomes the complete bytes of an
HTTP/1.1 JSON-RPC request, sent over a few keep-alive connections by plain asyncio (no HTTP
library on the hot path). One connection carries its transactions strictly in order and waits
for each ``broadcast_tx_sync`` answer (the CheckTx result) before the next, so a signer whose
transactions all travel on one connection reaches the mempool with its nonces in order.

Throughput is read back from the chain, not from the sender: the blocks' ``num_txs`` and
header times from ``/blockchain``. Latency (open loop, fixed rate) is from a transaction's
broadcast to the moment a poller sees the block that contains it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

# --------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams


class RawHttp:
    """One keep-alive HTTP/1.1 connection to the node's RPC; requests are pre-encoded bytes."""

    def __init__(self, rpc_url: str):
        parts = urlsplit(rpc_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> "RawHttp":
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except ConnectionError:
                pass

    async def request(self, raw: bytes) -> bytes:
        """Send one request and return the body of the response."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length, chunked = None, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length is not None:
            return await self._reader.readexactly(length)
        if not chunked:
            raise RuntimeError(f"response without a length: {head[:200]!r}")
        body = bytearray()
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return bytes(body)
            body += await self._reader.readexactly(size)
            await self._reader.readexactly(2)

    async def get(self, path: str) -> dict:
        """A GET (idempotent): retried once on a fresh connection if the node closed an idle one
        (CometBFT's RPC server drops keep-alive connections idle for longer than its 10 s read timeout)."""
        raw = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        try:
            reply = await self.request(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            await self.connect()
            reply = await self.request(raw)
        body = json.loads(reply)
        if "error" in body:
            raise RuntimeError(f"{path}: {body['error']}")
        return body["result"]


def broadcast_request(tx: bytes, method: str = "broadcast_tx_sync") -> bytes:
    """The full HTTP request that broadcasts ``tx`` (JSON-RPC POST, base64 tx, as ChainClient does)."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"%s","params":{"tx":"%s"}}' % (method.encode(), base64.b64encode(tx))
    return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def check_result(body: bytes) -> tuple[int, str]:
    """(code, log) of a broadcast_tx_sync answer; an RPC error (mempool full ...) is code -1."""
    reply = json.loads(body)
    if "error" in reply:
        return -1, str(reply["error"].get("data") or reply["error"].get("message"))
    result = reply["result"]
    return int(result.get("code", 0)), result.get("log", "")


# --------------------------------------------------------------------------------------------
# Sending


@dataclass
class SendResult:
    sent: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # "code: log" -> count
    started: float = 0.0
    finished: float = 0.0
    send_times: dict[str, float] = field(default_factory=dict)  # tx (base64) -> perf_counter at send

    @property
    def seconds(self) -> float:
        return self.finished - self.started


async def closed_loop(rpc_url: str, lanes: list[list[bytes]]) -> SendResult:
    """Each lane (a list of pre-built requests) on its own connection, back to back."""
    conns = [await RawHttp(rpc_url).connect() for _ in lanes]
    out = SendResult()

    async def lane(conn: RawHttp, requests: list[bytes]) -> None:
        for raw in requests:
            code, log = check_result(await conn.request(raw))
            out.sent += 1
            if code == 0:
                out.accepted += 1
            else:
                out.rejected[f"{code}: {log[:80]}"] += 1

    out.started = time.perf_counter()
    try:
        await asyncio.gather(*(lane(c, reqs) for c, reqs in zip(conns, lanes)))
    finally:
        out.finished = time.perf_counter()
        for c in conns:
            await c.close()
    return out


async def open_loop(rpc_url: str, requests: list[tuple[str, bytes]], rate: float, connections: int) -> SendResult:
    """Request k (of (key, bytes) pairs) goes at start + k/rate on connection k % connections.

    The caller orders ``requests`` so that each signer's transactions fall on one connection.
    The send time recorded is the actual one (a late connection does not hide its lateness).
    """
    conns = [await RawHttp(rpc_url).connect() for _ in range(connections)]
    out = SendResult()
    start = time.perf_counter() + 0.05

    async def lane(c: int) -> None:
        for k in range(c, len(requests), connections):
            key, raw = requests[k]
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            out.send_times[key] = time.perf_counter()
            code, log = check_result(await conns[c].request(raw))
            out.sent += 1
            if code == 0:
                out.accepted += 1
            else:
                out.rejected[f"{code}: {log[:80]}"] += 1

    out.started = start
    try:
        await asyncio.gather(*(lane(c) for c in range(connections)))
    finally:
        out.finished = time.perf_counter()
        for c in conns:
            await c.close()
    return out


# --------------------------------------------------------------------------------------------
# Reading the chain


def parse_time(text: str) -> float:
    """RFC 3339 with up to nanoseconds (CometBFT's header time) to unix seconds."""
    main, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


@dataclass(frozen=True)
class BlockMeta:
    height: int
    time: float
    num_txs: int


async def block_metas(rpc: RawHttp, lo: int, hi: int) -> list[BlockMeta]:
    found: dict[int, BlockMeta] = {}
    top = hi
    while top >= lo:
        result = await rpc.get(f"/blockchain?minHeight={max(lo, top - 19)}&maxHeight={top}")
        metas = result["block_metas"]
        if not metas:
            break
        for m in metas:
            h = int(m["header"]["height"])
            found[h] = BlockMeta(h, parse_time(m["header"]["time"]), int(m["num_txs"]))
        top = min(found) - 1
    return [found[h] for h in sorted(found)]


async def height(rpc: RawHttp) -> int:
    return int((await rpc.get("/status"))["sync_info"]["latest_block_height"])


async def wait_drained(rpc: RawHttp, timeout: float = 120.0) -> int:
    """Until the mempool is empty and one more block has committed; returns that height."""
    deadline = time.monotonic() + timeout
    while int((await rpc.get("/num_unconfirmed_txs"))["n_txs"]) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the mempool did not drain")
        await asyncio.sleep(0.05)
    h = await height(rpc)
    while await height(rpc) < h + 2:  # +2: block h+1 carries the commit time of block h (see below)
        if time.monotonic() > deadline:
            raise TimeoutError("no block after the mempool drained")
        await asyncio.sleep(0.05)
    return await height(rpc)


@dataclass
class Throughput:
    tx_per_s: float
    txs: int  # load transactions in the window
    seconds: float
    blocks: int
    first_height: int
    last_height: int
    total_txs: int  # every load transaction of the round, including the first block's

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def committed_throughput(metas: list[BlockMeta]) -> Throughput:
    """Committed tx/s between the first and the last block that hold load transactions.

    CometBFT's header time of block h+1 is BFT time: the (median) time of block h's precommits,
    so it stands for "block h committed". The rate is the transactions of the blocks after the
    first, up to the last, over the time between the first's and the last's commit. The first
    block's own transactions are left out: they gathered before the window opened.
    """
    by_height = {m.height: m for m in metas}
    loaded = [m for m in metas if m.num_txs > 0]
    if len(loaded) < 2:
        raise ValueError(f"only {len(loaded)} block(s) hold load transactions: make the round bigger")
    first, last = loaded[0], loaded[-1]
    if last.height + 1 not in by_height:
        raise ValueError(f"block {last.height + 1} (the commit time of {last.height}) is missing")
    t0, t1 = by_height[first.height + 1].time, by_height[last.height + 1].time
    txs = sum(m.num_txs for m in loaded[1:])
    return Throughput(txs / (t1 - t0), txs, t1 - t0, last.height - first.height + 1, first.height, last.height,
                      sum(m.num_txs for m in loaded))


class BlockWatcher:
    """Polls ``/status`` every ``interval``; for each new block, when it was first seen and
    which transactions (base64, as the RPC returns them) it holds."""

    def __init__(self, rpc_url: str, interval: float = 0.01):
        self.rpc_url, self.interval = rpc_url, interval
        self.seen: dict[str, float] = {}  # base64 tx -> perf_counter when its block was seen
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._rpc = await RawHttp(self.rpc_url).connect()
        self._last = await height(self._rpc)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            h = await height(self._rpc)
            now = time.perf_counter()
            while self._last < h:
                self._last += 1
                block = await self._rpc.get(f"/block?height={self._last}")
                for tx in block["block"]["data"]["txs"] or []:
                    self.seen.setdefault(tx, now)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._rpc.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(sent: SendResult, watcher: BlockWatcher, keys: list[str], skip_fraction: float = 0.1) -> dict:
    """Broadcast-to-commit-seen latencies (ms) of the requests after the first ``skip_fraction``."""
    lat = []
    missing = 0
    for key in keys[int(len(keys) * skip_fraction):]:
        if key in watcher.seen and key in sent.send_times:
            lat.append((watcher.seen[key] - sent.send_times[key]) * 1000)
        else:
            missing += 1
    return {"count": len(lat), "missing": missing, "p50_ms": round(percentile(lat, 50), 1),
            "p99_ms": round(percentile(lat, 99), 1), "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
            "offered_tx_per_s": round(len(keys) / max(sent.seconds, 1e-9), 1)}
