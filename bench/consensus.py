"""``make bench-consensus``: committed signed-tx throughput of rdx's ABCI app against CometBFT's
built-in kvstore app, and rdx's commit latency at a steady load.

Both chains are single-validator CometBFT v0.38 nodes made the same way, with the same
config.toml values (checked: the files may differ only in the lines naming the app, the
moniker and the listen addresses) and driven by the same load generator (bench/loadgen.py) in
the same run. rdx's node talks ABCI over a socket to ``python -m services.consensus`` (with its
relay publishing to a real Kafka broker, and its signature helper process, whose CPU counts as the
app's); kvstore runs inside the node (``proxy_app =
"kvstore"``, CometBFT's in-memory example app). Only one chain works at a time: the other is
paused with SIGSTOP (so its empty blocks do not steal CPU) and resumed with SIGCONT.

Rounds alternate rdx / kvstore after a warm-up round of each; a round's size is set from the
warm-up so that it lasts about ``--round-seconds``; the medians are reported. Then a fixed
rate of 30% of rdx's median throughput is offered to rdx, and the same rate to kvstore, and the
broadcast-to-commit latency is measured.

rdx's load: members.RotateKey (to the same key) by ``--signers`` registered members with
increasing nonces, each signer's transactions on one connection; kvstore's: ``key=value``
transactions of the same length. Both nodes index txs as CometBFT does by default (``--tx-index
kv``), which for kvstore includes six event attributes per tx that its app marks for indexing
(the two halves of the tx among them; rdx's txs one each, the ``entity`` of the chain event they
emit), a cost that grows over a run; ``--tx-index null`` measures both without.

Both chains run the same node binary: CometBFT v0.38.26 as `rdx setup` builds it, with
rdx/patches/cometbft-*.patch (the other, cometbft-exit-when-app-lost.patch, acts only once an app
connection is lost). The flush patch touches only the ABCI socket client,
which kvstore (in-process) never uses. Upstream (v0.38 through v1.0) arms that client's flush
timer with 20 ns instead of 20 ms, so under load the node spent 30-36% of its CPU re-arming a
timer and rdx reached 0.31-0.39 of kvstore (measured on 2026-11-27 with the unpatched binary;
0.37 even with signature checks switched off, so it was not the app). After the measured rounds
a diagnostic round takes a Go CPU profile of rdx's node and reports the share spent in that
timer, so a build that lost the patch shows at once.

``RDX_BENCH_PROFILE=1`` runs rdx's consensus service under cProfile and prints where its time
went, per committed tx (the .prof file stays in the state directory with ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from bench import common, loadgen
from rdx import toolchain as tc
from rdx.components import LOOPBACK, CometNode, KafkaBroker, Process, ServiceProcess, free_port
from rdx.supervisor import genesis_app_state
from services.common.identity import Identity
from services.common.tx import Tx

ROOT = Path(__file__).resolve().parent.parent
CHAIN_ID = "rdx-bench"
BAR = 0.7  # issue 23: at least 0.7 of kvstore (0.5 before it)

# The node settings both chains share (on top of `cometbft init` defaults and CometNode.configure).
# The mempool holds a whole round, so "mempool full" never shapes the result.
MEMPOOL_SIZE = 100_000
# ... and no signer's share of it is full: 32 signers each queue a round's worth of txs.
UNBOUNDED_SIGNERS = {"max_pending_txs_per_signer": MEMPOOL_SIZE, "max_pending_bytes_per_signer": 1 << 30}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# The two chains


# cProfile timed by the process's CPU clock, not the wall: the bench SIGSTOPs the idle chain, and a
# wall-clock profile charged those seconds to whatever line the process had stopped on.
CPU_PROFILER = """import cProfile, runpy, sys, time
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module]
profiler = cProfile.Profile(time.process_time)
profiler.enable()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


class ProfiledService(ServiceProcess):
    """``services.consensus`` under cProfile with a CPU-time clock; the stats are written on SIGTERM exit."""

    profile_path: Path | None = None

    def start(self, timeout: float = 60.0, wait: bool = True) -> None:
        if self.profile_path is None:
            return super().start(timeout, wait)
        env = {**self.env, "RDX_HTTP_PORT": str(self.http_port), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-c", CPU_PROFILER, str(self.profile_path), f"services.{self.name}"]
        self.process = Process(self.name, argv, self.log_dir / f"{self.name}.log", env=env, cwd=ROOT)
        self.process.start()
        if wait:
            self.wait_ready(timeout)


def tune(node: CometNode, tx_index: str, proxy_app: str | None = None) -> tuple[str, str]:
    """The shared settings; returns the node's Prometheus metrics URL and its pprof address (Go's
    profiler endpoint costs nothing until a profile is asked for, and only the diagnostic round
    after the measured ones asks). ``tx_index``: the node's tx indexer, "kv" (CometBFT's default)
    or "null" (see ``--tx-index``)."""
    path = node.home / "config" / "config.toml"
    doc = tomlkit.parse(path.read_text())
    doc["tx_index"]["indexer"] = tx_index
    doc["mempool"]["size"] = MEMPOOL_SIZE
    doc["mempool"]["max_txs_bytes"] = 1 << 30
    metrics, pprof = f"{LOOPBACK}:{free_port()}", f"{LOOPBACK}:{free_port()}"
    doc["instrumentation"]["prometheus"] = True  # for cometbft_mempool_recheck_times
    doc["instrumentation"]["prometheus_listen_addr"] = metrics
    doc["rpc"]["pprof_laddr"] = pprof
    if proxy_app is not None:
        doc["proxy_app"] = proxy_app
    path.write_text(tomlkit.dumps(doc))
    return f"http://{metrics}/metrics", pprof


def config_differences(a: Path, b: Path) -> list[str]:
    """Lines of two config.toml files that differ, apart from those expected to."""
    expected = ("proxy_app", "moniker", "laddr", "pprof_laddr", "external_address", "prometheus_listen_addr")
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    if len(la) != len(lb):
        return [f"{a} has {len(la)} lines, {b} {len(lb)}"]
    return [f"{x!r} != {y!r}" for x, y in zip(la, lb) if x != y and not x.strip().startswith(expected)]


@dataclass
class Chain:
    name: str
    node: CometNode
    app: ServiceProcess | None = None
    metrics_url: str = ""
    pprof: str = ""

    def metric(self, name: str) -> float:
        """A counter or gauge of the node's Prometheus endpoint (summed over label sets)."""
        total = 0.0
        for line in _get_text(self.metrics_url).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    @property
    def rpc_url(self) -> str:
        return self.node.rpc_url

    def _groups(self) -> list[int]:
        procs = [self.app.process if self.app else None, self.node.process]
        return [p.popen.pid for p in procs if p is not None and p.alive()]

    def pause(self) -> None:
        for pid in reversed(self._groups()):
            os.killpg(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._groups():
            os.killpg(pid, signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        self.node.stop()
        if self.app:
            self.app.stop()


def start_rdx(root: Path, toolchain: tc.Toolchain, kafka: str, association: Identity, timeout_commit: str,
              profile: Path | None, tx_index: str = "kv") -> Chain:
    abci_port = free_port()
    app = ProfiledService("consensus", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": kafka, "RDX_STATE_ROOT": str(root / "rdx-app"), "RDX_CHAIN_ID": CHAIN_ID,
        "RDX_ABCI_PORT": str(abci_port), "RDX_LOG_LEVEL": "WARNING"}, root / "rdx-app" / "logs")
    app.profile_path = profile
    node = CometNode(root / "rdx-node", toolchain, chain_id=CHAIN_ID, rpc_port=free_port(), p2p_port=free_port(),
                     abci_port=abci_port, timeout_commit=timeout_commit,
                     app_state=genesis_app_state(association, params=UNBOUNDED_SIGNERS))
    chain = Chain("rdx", node, app)
    app.start()
    try:
        node.prepare()
        chain.metrics_url, chain.pprof = tune(node, tx_index)
        node.start()
    except BaseException:  # the run ends here: leave no app (and its signature helper) behind
        app.stop()
        raise
    return chain


def start_kvstore(root: Path, toolchain: tc.Toolchain, timeout_commit: str, tx_index: str = "kv") -> Chain:
    node = CometNode(root / "kv-node", toolchain, chain_id=CHAIN_ID, rpc_port=free_port(), p2p_port=free_port(),
                     abci_port=free_port(), timeout_commit=timeout_commit, app_state={})
    node.prepare()
    metrics, pprof = tune(node, tx_index, proxy_app="kvstore")  # the same as `cometbft node --proxy_app=kvstore`
    node.start()
    return Chain("kvstore", node, metrics_url=metrics, pprof=pprof)


# --------------------------------------------------------------------------------------------
# Transactions


class RdxLoad:
    """Pre-built, correctly signed members.RotateKey txs; signer s always on lane s % lanes."""

    def __init__(self, signers: list[Identity], lanes: int):
        self.signers, self.lanes = signers, lanes
        self.nonce = {s.account: 1 for s in signers}  # registration used none of theirs

    def build(self, n: int) -> list[bytes]:
        """n txs, round-robin over the signers, each with its next nonce."""
        txs = []
        for k in range(n):
            s = self.signers[k % len(self.signers)]
            txs.append(Tx.build(s, CHAIN_ID, "members.RotateKey", self.nonce[s.account],
                                {"public_key": s.public_key}).encode())
            self.nonce[s.account] += 1
        return txs


def kv_txs(tag: str, n: int, size: int) -> list[bytes]:
    """``key=value`` txs of exactly ``size`` bytes (kvstore accepts one '=' and no ':')."""
    out = []
    for k in range(n):
        head = f"{tag}-{k:08d}="
        out.append((head + "v" * max(1, size - len(head))).encode())
    return out


def lanes_of(txs: list[bytes], lanes: int, method: str) -> list[list[bytes]]:
    """tx k goes on lane k % lanes: with len(signers) a multiple of lanes, a signer keeps its lane."""
    return [[loadgen.broadcast_request(tx, method) for tx in txs[c::lanes]] for c in range(lanes)]


# --------------------------------------------------------------------------------------------
# Rounds


async def throughput_round(chain: Chain, txs: list[bytes], lanes: int, method: str, rough: bool = False
                           ) -> tuple[loadgen.Throughput, loadgen.SendResult]:
    requests = lanes_of(txs, lanes, method)  # encoded before the clock starts
    rpc = await loadgen.RawHttp(chain.rpc_url).connect()
    try:
        before = await loadgen.height(rpc)
        sent = await loadgen.closed_loop(chain.rpc_url, requests)
        if sent.rejected:
            raise RuntimeError(f"{chain.name}: the node refused {dict(sent.rejected)}")
        # With broadcast_tx_async the last CheckTx may still be on its way to the mempool when the
        # sender is done, so wait for the count of committed txs rather than for an empty mempool.
        deadline = time.monotonic() + 60
        while True:
            end = await loadgen.wait_drained(rpc)
            metas = await loadgen.block_metas(rpc, before + 1, end)
            committed = sum(m.num_txs for m in metas)
            if committed >= len(txs) or time.monotonic() > deadline:
                break
    finally:
        await rpc.close()
    if committed != len(txs):
        raise RuntimeError(f"{chain.name}: {committed} of {len(txs)} load txs were committed")
    try:
        return loadgen.committed_throughput(metas), sent
    except ValueError:
        if not rough:
            raise
        # A warm-up that fit in one block: the sender's rate is estimate enough to size the rounds.
        loaded = [m for m in metas if m.num_txs]
        return loadgen.Throughput(len(txs) / sent.seconds, len(txs), sent.seconds, len(loaded),
                                  loaded[0].height, loaded[-1].height, len(txs)), sent


async def latency_run(chain: Chain, txs: list[bytes], rate: float, lanes: int) -> dict:
    keyed = [(base64.b64encode(tx).decode(), loadgen.broadcast_request(tx)) for tx in txs]
    watcher = loadgen.BlockWatcher(chain.rpc_url)
    await watcher.start()
    rpc = await loadgen.RawHttp(chain.rpc_url).connect()
    try:
        sent = await loadgen.open_loop(chain.rpc_url, keyed, rate, lanes)
        if sent.rejected:
            raise RuntimeError(f"{chain.name}: CheckTx rejected {dict(sent.rejected)}")
        await loadgen.wait_drained(rpc)
        await asyncio.sleep(0.1)
    finally:
        await watcher.stop()
        await rpc.close()
    return loadgen.latency_summary(sent, watcher, [k for k, _ in keyed])


async def register(chain: Chain, association: Identity, n: int) -> list[Identity]:
    signers = [Identity.generate(f"bench-{i:03d}") for i in range(n)]
    txs = [Tx.build(association, CHAIN_ID, "members.Register", i + 1, {
        "id": s.account, "name": s.account, "roles": ["consumer"], "public_key": s.public_key}).encode()
        for i, s in enumerate(signers)]
    sent = await loadgen.closed_loop(chain.rpc_url, [[loadgen.broadcast_request(tx) for tx in txs]])
    if sent.rejected:
        raise RuntimeError(f"registering the bench signers: {dict(sent.rejected)}")
    rpc = await loadgen.RawHttp(chain.rpc_url).connect()
    try:
        await loadgen.wait_drained(rpc)
        for s in signers:
            if await query(rpc, f"/accounts/{s.account}") is None:
                raise RuntimeError(f"signer {s.account} was not registered")
    finally:
        await rpc.close()
    return signers


async def query(rpc: loadgen.RawHttp, path: str):
    resp = (await rpc.get(f'/abci_query?path="{path}"'))["response"]
    if not resp.get("value"):
        return None
    return json.loads(base64.b64decode(resp["value"]))


async def verify_nonces(chain: Chain, sent: list[list[bytes]]) -> dict[str, int]:
    """Every tx sent passed authentication in a block: each signer's nonce on chain is its last one
    sent. Returns those nonces."""
    last: dict[str, int] = {}
    for batch in sent:
        for raw in batch:
            tx = json.loads(raw)
            last[tx["signer"]] = tx["nonce"]
    rpc = await loadgen.RawHttp(chain.rpc_url).connect()
    try:
        for account, nonce in last.items():
            on_chain = (await query(rpc, f"/accounts/{account}"))["nonce"]
            if on_chain != nonce:
                raise RuntimeError(f"{account}: nonce {on_chain} on chain, but {nonce} was sent")
    finally:
        await rpc.close()
    return last


async def relay_caught_up(service_url: str, height: int, timeout: float = 120.0) -> float:
    """Seconds until the relay's published height (its Prometheus gauge) reaches ``height``."""
    started = time.monotonic()
    while True:
        text = await asyncio.to_thread(_get_text, f"{service_url}/metrics")
        for line in text.splitlines():
            if line.startswith("rdx_relay_published_height "):
                if float(line.split()[1]) >= height:
                    return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the relay did not publish up to height {height} within {timeout}s")
        await asyncio.sleep(0.1)


FLUSH_TIMER = "ThrottleTimer).fireRoutine"


async def flush_timer_share(chain: Chain, txs: list[bytes], lanes: int, method: str, cometbft: Path, out: Path,
                            seconds: float = 4.0) -> float | None:
    """A diagnostic round, after the measured ones: the share of the node's CPU samples spent in
    its ABCI socket client's flush timer while it serves rdx. CometBFT (v0.38 to v1.0) passes
    ``flushThrottleMS = 20`` to ``NewThrottleTimer`` as a ``time.Duration``: 20 ns, not 20 ms. While
    the client's writer goroutine is busy, the timer re-arms itself every 20 ns, each time in a new
    goroutine. kvstore runs in-process and has no socket client. None if ``go tool pprof`` fails."""
    url = f"http://{chain.pprof}/debug/pprof/profile?seconds={seconds:g}"
    chain.resume()
    try:
        await asyncio.sleep(0.5)
        grab = asyncio.create_task(asyncio.to_thread(
            lambda: out.write_bytes(urllib.request.urlopen(url, timeout=seconds + 30).read())))
        await throughput_round(chain, txs, lanes, method)
        await grab
    finally:
        chain.pause()
    top = subprocess.run(["go", "tool", "pprof", "-top", "-cum", str(cometbft), str(out)],
                         capture_output=True, text=True)
    for line in top.stdout.splitlines():
        if line.rstrip().endswith(FLUSH_TIMER):
            return float(line.split()[4].rstrip("%")) / 100  # flat flat% sum% cum cum% name
    return None if top.returncode else 0.0


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def app_costs(n: int = 4000, block: int = 500, signers: int = 32) -> dict[str, float]:
    """CPU cost per tx of each ABCI step of rdx's app, called in-process (no socket, no node, no
    Kafka): microseconds of this process's CPU time per tx (so other jobs on the machine do not
    count, as they did on the wall clock), best of three runs. The protobuf row is the decoding
    of a CheckTx request and encoding of its response, as the ABCI server does for each.

    ``recheck`` is CometBFT's CheckTx of a tx still in the mempool after a Commit (every Commit
    starts the check state afresh; the signature was verified at the first CheckTx): an empty
    block is committed, then every tx is checked again.

    A validator executes each block in ProcessProposal (to refuse a proposal holding a tx that
    may not be in a block) and FinalizeBlock reuses that execution; a node replaying blocks runs
    FinalizeBlock alone. Both paths are timed over the same txs, on two apps with the same
    state: ``process_proposal`` + ``finalize_block`` against ``finalize_block_alone``.

    ``relay_publish`` is the relay's work per event (one per bench tx) for those blocks' events:
    read from the outbox, made Events, encoded and appended to aiokafka's record batches, with a
    producer that takes each batch without sending it (``_UnsentBatches``): no broker, no network."""
    from tendermint.abci import types_pb2 as abci

    from services.consensus.app import RdxApp
    from services.consensus.state import Database

    def fresh_app(path: Path, association: Identity, people: list[Identity]) -> RdxApp:
        app = RdxApp(Database(path), CHAIN_ID)
        app.init_chain(abci.RequestInitChain(chain_id=CHAIN_ID,
                                             app_state_bytes=json.dumps(genesis_app_state(association)).encode()))
        regs = [Tx.build(association, CHAIN_ID, "members.Register", i + 1, {
            "id": p.account, "name": p.account, "roles": ["consumer"], "public_key": p.public_key}).encode()
            for i, p in enumerate(people)]
        app.finalize_block(abci.RequestFinalizeBlock(txs=regs, height=1))
        app.commit(abci.RequestCommit())
        return app

    clock = time.process_time
    best: dict[str, float] = {}
    for _ in range(3):
        tmp = Path(tempfile.mkdtemp(prefix="rdx-app-costs."))
        try:
            association = Identity.generate("association")
            people = [Identity.generate(f"bench-{i:03d}") for i in range(signers)]
            app, replayer = fresh_app(tmp / "a.sqlite", association, people), fresh_app(tmp / "b.sqlite", association, people)
            txs = RdxLoad(people, 1).build(n)
            t = {}
            start = clock()
            for tx in txs:
                if app.check_tx(abci.RequestCheckTx(tx=tx)).code != 0:
                    raise RuntimeError("CheckTx rejected a bench tx")
            t["check_tx"] = clock() - start
            # The same CheckTx with the signature helper, as the ABCI server drives it under load
            # (verify_ahead for the next 64, then each served): this thread's CPU alone.
            helped = fresh_app(tmp / "c.sqlite", association, people)
            helped.start_signature_helper()
            try:
                start = clock()
                for i in range(0, n, 64):
                    helped.verify_ahead(txs[i:i + 64])
                    for tx in txs[i:i + 64]:
                        if helped.check_tx(abci.RequestCheckTx(tx=tx)).code != 0:
                            raise RuntimeError("CheckTx with the helper rejected a bench tx")
                t["check_tx_app_thread_with_helper"] = clock() - start
            finally:
                helped.stop_signature_helper()
                helped.db.close()
            app.finalize_block(abci.RequestFinalizeBlock(txs=[], height=2))  # a Commit: the check state starts afresh
            app.commit(abci.RequestCommit())
            start = clock()
            for tx in txs:
                if app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.RECHECK)).code != 0:
                    raise RuntimeError("a recheck rejected a bench tx")
            t["recheck"] = clock() - start
            for tx in txs:  # the other node saw the same txs in its mempool
                replayer.check_tx(abci.RequestCheckTx(tx=tx))
            replayer.finalize_block(abci.RequestFinalizeBlock(txs=[], height=2))
            replayer.commit(abci.RequestCommit())
            t["process_proposal"] = t["finalize_block"] = t["commit"] = t["finalize_block_alone"] = 0.0
            for h, i in enumerate(range(0, n, block), start=3):
                request = {"txs": txs[i:i + block], "height": h}
                start = clock()
                verdict = app.process_proposal(abci.RequestProcessProposal(**request))
                t["process_proposal"] += clock() - start
                if verdict.status != abci.ResponseProcessProposal.ACCEPT:
                    raise RuntimeError("ProcessProposal rejected a bench block")
                start = clock()
                resp = app.finalize_block(abci.RequestFinalizeBlock(**request))
                t["finalize_block"] += clock() - start
                if any(r.code for r in resp.tx_results):
                    raise RuntimeError("FinalizeBlock rejected a bench tx")
                start = clock()
                app.commit(abci.RequestCommit())
                t["commit"] += clock() - start
                start = clock()
                replayed = replayer.finalize_block(abci.RequestFinalizeBlock(**request))
                t["finalize_block_alone"] += clock() - start
                replayer.commit(abci.RequestCommit())
                if replayed.app_hash != resp.app_hash:
                    raise RuntimeError("the replayed block's app hash differs")
            with ThreadPoolExecutor(1) as pool:  # a loop of its own: the bench calls this from within its loop
                t["relay_publish"] = pool.submit(asyncio.run, _relay_cpu(tmp / "a.sqlite", tmp / "relay.sqlite",
                                                                         clock)).result() * n
            raw = [abci.Request(check_tx=abci.RequestCheckTx(tx=tx)).SerializeToString() for tx in txs]
            ok = abci.Response(check_tx=abci.ResponseCheckTx(code=0))
            start = clock()
            for r in raw:
                abci.Request.FromString(r)
                ok.SerializeToString()
            t["protobuf_check_tx"] = clock() - start
            app.db.close()
            replayer.db.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for k, v in t.items():
            best[k] = min(best.get(k, float("inf")), v / n * 1e6)
    return best


class _UnsentBatches:
    """The part of aiokafka's producer the relay's ``publish_many`` uses, acknowledging at once:
    its record batches are filled as for a broker, and dropped."""

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self):
        from aiokafka.producer.message_accumulator import BatchBuilder

        from services.consensus.relay import RECORD_BATCH_BYTES

        return BatchBuilder(RECORD_BATCH_BYTES, 0, is_transactional=False)

    async def send_batch(self, batch, topic: str, *, partition: int) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def _relay_cpu(chain_db: Path, position_db: Path, clock) -> float:
    """Seconds of CPU per event for the relay to publish every event in ``chain_db``."""
    from services.consensus.relay import Relay

    relay = Relay(chain_db, position_db, "127.0.0.1:1")
    relay.producer._producer = _UnsentBatches()
    events, start = 0, clock()
    while published := await relay.publish_pending():
        events += published
    spent = clock() - start
    relay.chain.close()
    relay.position.conn.close()
    return spent / max(1, events)


def cpu_snapshot(procs: dict[str, Process | None]) -> dict[str, tuple[float, float]]:
    """Per process (None stands for this one), summed over its threads and its child processes'
    (the app's signature helper): (seconds on a CPU, seconds runnable but waiting for a CPU), from
    /proc/<pid>/task/*/schedstat."""
    out = {}
    for name, proc in procs.items():
        pid = os.getpid() if proc is None else proc.popen.pid
        run = wait = 0
        for task in (t for p in (pid, *([] if proc is None else children(pid))) for t in Path(f"/proc/{p}/task").glob("*")):
            try:
                fields = (task / "schedstat").read_text().split()
                run, wait = run + int(fields[0]), wait + int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
        out[name] = (run / 1e9, wait / 1e9)
    return out


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (this kernel has no /proc/<pid>/task/*/children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:  # field 4, after the command in parentheses
            found.append(int(stat.parent.name))
    return found


def size_for(rate: float, seconds: float, lanes: int, lo: int, hi: int) -> int:
    n = int(min(hi, max(lo, rate * seconds)))
    return n - n % lanes


# --------------------------------------------------------------------------------------------


async def run(args, root: Path) -> dict:
    toolchain = tc.installed()
    profile = root / "consensus.prof" if os.environ.get("RDX_BENCH_PROFILE") else None
    association = Identity.generate("association")
    broker = KafkaBroker(root / "kafka", toolchain, port=free_port(), controller_port=free_port(), heap="384m")
    chains: list[Chain] = []
    notes: list[str] = []
    committed = {"rdx": 0, "kv": 0}  # load txs committed (for per-tx figures)
    try:
        costs = app_costs()
        log("rdx app in-process, us per tx: " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()))
        log("starting Kafka, rdx's chain and kvstore's chain ...")
        broker.prepare()
        broker.start()
        rdx = start_rdx(root, toolchain, broker.bootstrap, association, args.timeout_commit, profile,
                        args.tx_index)
        chains.append(rdx)
        kv = start_kvstore(root, toolchain, args.timeout_commit, args.tx_index)
        chains.append(kv)
        diff = config_differences(rdx.node.home / "config" / "config.toml", kv.node.home / "config" / "config.toml")
        if diff:
            raise RuntimeError(f"the two nodes' settings differ: {diff}")
        kv.pause()
        signers = await register(rdx, association, args.signers)
        load = RdxLoad(signers, args.connections)
        warm_rdx_txs = load.build(args.warmup_txs)
        tx_size = int(statistics.median(len(tx) for tx in warm_rdx_txs))

        cpu_shares: dict[str, list[dict[str, float]]] = {"rdx": [], "kvstore": []}
        relay_lags: list[float] = []
        run_queue: dict[str, list[dict[str, float]]] = {"rdx": [], "kvstore": []}
        cpu_per_tx: dict[str, list[dict[str, float]]] = {"rdx": [], "kvstore": []}  # CPU us per committed tx

        async def one(chain: Chain, txs: list[bytes], label: str) -> loadgen.Throughput:
            chain.resume()
            try:
                await asyncio.sleep(0.5)  # let the resumed node settle into its rhythm
                procs = {"node": chain.node.process, "kafka": broker.process, "loadgen": None}
                if chain.app is not None:
                    procs = {"app": chain.app.process, **procs}
                cpu0, t0 = cpu_snapshot(procs), time.perf_counter()
                result, sent = await throughput_round(chain, txs, args.connections, f"broadcast_tx_{args.broadcast}",
                                                      rough=label == "warm-up")
                cpu1, t1 = cpu_snapshot(procs), time.perf_counter()
                relay = ""
                if chain.app is not None:  # rdx's relay must have published the round before it is paused
                    lag = await relay_caught_up(chain.app.url, result.last_height)
                    relay_lags.append(lag)
                    relay = f"; relay done {lag:.1f}s after the drain"
            finally:
                chain.pause()
            share = {k: (cpu1[k][0] - cpu0[k][0]) / (t1 - t0) for k in cpu0}
            waits = {k: (cpu1[k][1] - cpu0[k][1]) / (t1 - t0) for k in cpu0}
            run_queue[chain.name].append(waits)
            committed["rdx" if chain is rdx else "kv"] += len(txs)
            cpu_shares[chain.name].append(share)
            cpu_per_tx[chain.name].append({k: (cpu1[k][0] - cpu0[k][0]) / len(txs) * 1e6 for k in cpu0})
            log(f"{label:>10} {chain.name:>7}: {result.tx_per_s:8.1f} tx/s  ({result.txs} txs in "
                f"{result.seconds:.2f}s over {result.blocks} blocks; sender {sent.sent / sent.seconds:.0f} req/s; "
                f"cpu cores: " + " ".join(f"{k} {v:.2f}" for k, v in share.items())
                + "; waiting for a cpu: " + " ".join(f"{k} {v:.2f}" for k, v in waits.items()) + relay + ")")
            return result

        # Warm-up (also sizes the measured rounds).
        rdx.pause()
        warm_rdx = await one(rdx, warm_rdx_txs, "warm-up")
        warm_kv = await one(kv, kv_txs("warm", 5 * args.warmup_txs, tx_size), "warm-up")
        n_rdx = size_for(warm_rdx.tx_per_s, args.round_seconds, args.connections, 12_000, 30_000)  # a round spans blocks
        n_kv = size_for(warm_kv.tx_per_s, args.round_seconds, args.connections, 1000, 60_000)
        log(f"rounds: {args.rounds} x ({n_rdx} rdx txs, {n_kv} kvstore txs of {tx_size} bytes); building them ...")
        built = time.perf_counter()
        rdx_rounds = [load.build(n_rdx) for _ in range(args.rounds)]
        kv_rounds = [kv_txs(f"r{r}", n_kv, tx_size) for r in range(args.rounds)]
        # Latency runs at 30% of the measured median, not yet known: build for twice the warm-up's rate.
        lat_rdx_txs = load.build(int(args.latency_seconds * 0.3 * 2 * warm_rdx.tx_per_s) + args.connections)
        log(f"built in {time.perf_counter() - built:.1f}s")

        rdx_rates, kv_rates = [], []
        for r in range(args.rounds):
            order = [(rdx, rdx_rounds[r], rdx_rates), (kv, kv_rounds[r], kv_rates)]
            for chain, txs, rates in (order if r % 2 == 0 else order[::-1]):
                rates.append((await one(chain, txs, f"round {r + 1}")).tx_per_s)
        rdx_tps, kv_tps = statistics.median(rdx_rates), statistics.median(kv_rates)
        ratio = rdx_tps / kv_tps
        log(f"median: rdx {rdx_tps:.1f} tx/s, kvstore {kv_tps:.1f} tx/s, ratio {ratio:.3f}")

        # Latency at a steady 30% of rdx's measured maximum, then kvstore at the same rate.
        rate = 0.3 * rdx_tps
        n_lat = min(len(lat_rdx_txs), int(rate * args.latency_seconds))
        n_lat -= n_lat % args.connections
        latencies = {}
        for chain, txs in ((rdx, lat_rdx_txs[:n_lat]), (kv, kv_txs("lat", n_lat, tx_size))):
            chain.resume()
            try:
                await asyncio.sleep(0.5)
                latencies[chain.name] = await latency_run(chain, txs, rate, args.connections)
                committed["rdx" if chain is rdx else "kv"] += len(txs)
            finally:
                chain.pause()
            log(f"latency {chain.name:>7} at {rate:.0f} tx/s: {latencies[chain.name]}")
        rdx.resume()
        kv.resume()
        rechecks = await asyncio.to_thread(rdx.metric, "cometbft_mempool_recheck_times")
        kv_rechecks = await asyncio.to_thread(kv.metric, "cometbft_mempool_recheck_times")
        on_chain = await verify_nonces(rdx, [warm_rdx_txs, *rdx_rounds, lat_rdx_txs[:n_lat]])
        load.nonce = {account: nonce + 1 for account, nonce in on_chain.items()}  # the latency run used fewer
        kv.pause()
        spin = await flush_timer_share(rdx, load.build(n_rdx), args.connections, f"broadcast_tx_{args.broadcast}",
                                       toolchain.cometbft, root / "rdx-node.pprof")
        log(f"diagnostic round: the node's socket-client flush timer took "
            f"{'?' if spin is None else f'{spin:.0%}'} of its CPU samples")

        notes += [
            f"single validator each, timeout_commit={args.timeout_commit}, mempool.size={MEMPOOL_SIZE}, "
            f"recheck on, tx_index.indexer={args.tx_index!r} on both, config.toml otherwise identical (cometbft "
            f"init defaults)",
            f"rdx: ABCI over a loopback socket to python -m services.consensus (SQLite synchronous=FULL, "
            f"relay to a local Kafka 4.1.1 broker, tx signatures by the genesis' rule "
            f"{genesis_app_state(association).get('signatures', 'libsodium')!r}, signature helper process "
            f"{'off' if os.environ.get('RDX_SIGNATURE_HELPER', '').lower() in ('0', 'false') else 'on'}; "
            f"the app's CPU includes its helper's); kvstore: CometBFT's in-process in-memory example app",
            f"load: {args.signers} signers, members.RotateKey, {tx_size}-byte txs (kvstore key=value of the same size), "
            f"broadcast_tx_{args.broadcast} over {args.connections} keep-alive connections, txs pre-built; "
            f"the idle chain SIGSTOPped",
            f"rounds: warm-up + {args.rounds} alternating, {n_rdx} rdx / {n_kv} kvstore txs each; "
            f"rdx tx/s {[round(x, 1) for x in rdx_rates]}, kvstore tx/s {[round(x, 1) for x in kv_rates]}",
            f"tx/s = txs of the blocks after the first loaded one up to the last / time between their commits "
            f"(header time of the next block)",
            f"latency: open loop at {rate:.0f} tx/s (30% of rdx's median) for ~{args.latency_seconds:.0f}s, "
            f"broadcast_tx_sync sent -> block seen by a 10 ms /status poller; kvstore at the same rate as baseline",
            f"load generator, nodes, Kafka and the app share the machine's {os.cpu_count()} cpus; "
            f"the machine is shared with other jobs (load average at start {os.getloadavg()[0]:.2f})",
        ]
        for name, shares in cpu_shares.items():
            measured, waited = shares[1:], run_queue[name][1:]  # without the warm-up
            med = {k: statistics.median(s[k] for s in measured) for k in measured[0]}
            wmed = {k: statistics.median(s[k] for s in waited) for k in waited[0]}
            notes.append(f"{name} rounds, median cpu cores used: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
                         + " (runnable but waiting for a cpu: " + ", ".join(f"{k} {v:.2f}" for k, v in wmed.items())
                         + ")")
        notes.append(f"rdx's relay had published every event of a round at most {max(relay_lags):.1f}s "
                     f"(median {statistics.median(relay_lags):.1f}s) after the round's last block (not in the tx/s)")
        recheck_rate = rechecks / max(1, committed["rdx"])
        notes.append("rdx app called in-process (no socket/node/Kafka), CPU us per tx: "
                     + ", ".join(f"{k} {v:.0f}" for k, v in costs.items())
                     + f"; plus {recheck_rate:.2f} rechecks per committed tx (CometBFT "
                     f"rechecks the mempool after each block; kvstore: {kv_rechecks / max(1, committed['kv']):.2f}); "
                     f"app_in_process_cpu_us_per_tx = check_tx + recheck x that rate + process_proposal + "
                     f"finalize_block + commit")
        notes.append("both nodes: CometBFT v0.38.26 with rdx/patches/cometbft-socket-client-flush.patch (the ABCI "
                     "socket client's flush timer at its intended 20 ms, not 20 ns, plus a flush when no request is "
                     "waiting; kvstore, in-process, does not use that client)")
        notes.append("diagnostic round after the measured ones (not in the throughput or latency metrics), rdx's node under a pprof CPU "
                     "profile: " + ("go tool pprof failed" if spin is None else f"{spin:.0%} of its CPU samples in "
                     "its ABCI socket client's flush timer (30-36% with the unpatched binary)"))
        if profile:
            notes.append("RDX_BENCH_PROFILE was set: rdx ran under cProfile, so its numbers are slowed down")
        lat_r, lat_k = latencies["rdx"], latencies["kvstore"]
        # CPU time per committed tx, by process, median of the measured rounds: what the machine's
        # load changes least (a tx costs the CPU it costs; a busy machine makes the rounds slower).
        per_tx = {name: {k: statistics.median(r[k] for r in rounds[1:]) for k in rounds[0]}
                  for name, rounds in cpu_per_tx.items()}
        rdx_chain_us = per_tx["rdx"]["app"] + per_tx["rdx"]["node"]
        notes.append("CPU us per committed tx (median of the measured rounds): rdx " + ", ".join(
            f"{k} {v:.0f}" for k, v in per_tx["rdx"].items()) + "; kvstore " + ", ".join(
            f"{k} {v:.0f}" for k, v in per_tx["kvstore"].items())
            + f"; load average at the end of the rounds {os.getloadavg()[0]:.2f}")

        bar = f">= {BAR} (ratio)"
        if args.tx_index != "kv":
            bar += f"; tx_index {args.tx_index} on both: issue 23 sets the bar for the default run (kv)"
        return {
            "notes": "; ".join(notes),
            "metrics": [
                common.metric("committed_signed_tx_per_s", rdx_tps, "tx/s", baseline_name="cometbft_kvstore_tx_per_s",
                              baseline_value=kv_tps, bar=bar, passed=ratio >= BAR),
                common.metric("commit_latency_p50_ms", lat_r["p50_ms"], "ms",
                              baseline_name="cometbft_kvstore_commit_latency_p50_ms", baseline_value=lat_k["p50_ms"]),
                common.metric("commit_latency_p99_ms", lat_r["p99_ms"], "ms",
                              baseline_name="cometbft_kvstore_commit_latency_p99_ms", baseline_value=lat_k["p99_ms"]),
                common.metric("steady_load_tx_per_s", rate, "tx/s"),
                common.metric("chain_cpu_us_per_tx", rdx_chain_us, "us/tx", baseline_name="cometbft_kvstore_node_cpu_us_per_tx",
                              baseline_value=per_tx["kvstore"]["node"]),
                common.metric("app_cpu_us_per_tx", per_tx["rdx"]["app"], "us/tx"),
                common.metric("app_in_process_cpu_us_per_tx", costs["check_tx"] + costs["recheck"] * recheck_rate
                              + costs["process_proposal"] + costs["finalize_block"] + costs["commit"], "us/tx"),
                common.metric("relay_in_process_cpu_us_per_event", costs["relay_publish"], "us/event"),
                common.metric("block_execution_with_proposal_check_us_per_tx",
                              costs["process_proposal"] + costs["finalize_block"], "us/tx",
                              baseline_name="finalize_block_alone_us_per_tx", baseline_value=costs["finalize_block_alone"]),
                *([] if spin is None else [common.metric("rdx_node_cpu_share_in_socket_flush_timer", spin, "share")]),
            ],
        }
    finally:
        for chain in reversed(chains):
            chain.stop()
        broker.stop()
        if profile and profile.exists():
            report_profile(profile, committed["rdx"])


PROFILE_ROWS = [  # (label, file suffix, function): the parts of the app's work worth naming
    ("ABCI CheckTx (incl. rechecks)", "consensus/app.py", "check_tx"),
    ("ABCI ProcessProposal/PrepareProposal (execute the block)", "consensus/app.py", "_execute"),
    ("ABCI FinalizeBlock", "consensus/app.py", "finalize_block"),
    ("ABCI Commit (SQLite write)", "consensus/app.py", "commit"),
    ("  Ed25519 verify (all calls)", "common/identity.py", "verify"),
    ("  Tx.decode (JSON + pydantic + canonical check)", "common/tx.py", "decode"),
    ("  Tx.signing_bytes (canonical JSON)", "common/tx.py", "signing_bytes"),
    ("  Overlay.set (JSON round trip)", "consensus/state.py", "set"),
    ("  Database.get (SQLite read + JSON)", "consensus/state.py", "get"),
    ("relay: publish to Kafka", "consensus/relay.py", "publish_pending"),
    ("ABCI server: each request (protobuf, app, response)", "abci/server.py", "_handle"),
    ("ABCI server: bytes received (framing, protobuf, app)", "abci/server.py", "data_received"),
]


def report_profile(path: Path, committed_txs: int) -> None:
    """Where the consensus service's CPU time went: the rows above, per committed rdx tx and as a
    share of the whole (the profile's clock is the process's CPU time, so neither waiting in epoll
    nor the time SIGSTOPped while kvstore ran counts)."""
    stats = pstats.Stats(str(path))
    raw = stats.stats  # (file, line, function) -> (primitive calls, calls, tottime, cumtime, callers)
    busy = stats.total_tt
    n = max(1, committed_txs)
    print(f"\ncProfile of the consensus service ({path}; --keep keeps it): {busy:.1f} CPU s; {committed_txs} rdx txs "
          f"committed -> {busy / n * 1e6:.0f} CPU us per tx")
    print(f"{'':58} {'calls':>8} {'cum s':>7} {'us/tx':>7} {'% busy':>7}")
    for label, suffix, function in PROFILE_ROWS:
        rows = [v for k, v in raw.items() if k[0].endswith(suffix) and k[2] == function]
        calls, cum = sum(v[1] for v in rows), sum(v[3] for v in rows)
        print(f"{label:58} {calls:8d} {cum:7.2f} {cum / n * 1e6:7.0f} {cum / busy * 100:6.1f}%")
    print()
    stats.sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.consensus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=8.0)
    parser.add_argument("--warmup-txs", type=int, default=3000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--signers", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--broadcast", choices=["async", "sync"], default="async",
                        help="the throughput rounds' RPC method (latency always uses broadcast_tx_sync)")
    parser.add_argument("--timeout-commit", default="200ms")
    parser.add_argument("--tx-index", choices=["kv", "null"], default="kv",
                        help="both nodes' tx indexer: kv (the default, what rdx's nodes run) also indexes the six "
                             "event attributes kvstore's app marks for indexing on every tx (rdx's txs one), "
                             "a cost that grows over a run; null measures both chains without any indexing")
    parser.add_argument("--out", type=Path, default=common.RESULTS / "consensus.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args(argv)
    if args.signers % args.connections:
        parser.error("--signers must be a multiple of --connections (a signer keeps its connection)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = Path(tempfile.mkdtemp(prefix="rdx-bench-consensus."))
    started = time.monotonic()
    try:
        result = asyncio.run(run(args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"state kept in {root}")
    # Issue 18's proof generation and verification p99, in-process after the chain is down (they
    # load nothing the ratio above measured); bench/consensus_proofs.py has the tree's other costs.
    from bench import consensus_proofs

    proofs = consensus_proofs.proof_costs(keys=100_000, queries=2000)
    result["metrics"] += consensus_proofs.proof_metrics(proofs)
    result["notes"] += f"; proofs: {proofs['queries']} Query(prove=true) over {proofs['keys']} keys in SQLite"
    path = common.write("consensus", result["metrics"], result["notes"], path=args.out)  # ../shared/BENCH.md's shape
    print(path.read_text())
    log(f"wrote {args.out} in {time.monotonic() - started:.0f}s")
    verdict = "holds" if result["metrics"][0]["passed"] else "DOES NOT hold"
    log(f"the bar (rdx/kvstore >= {BAR}) {verdict}: ratio {result['metrics'][0]['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
