"""`make bench-billing`: settlements per second through the chain against plain signed transfers,
in the same run, on one validator (Kafka, CometBFT, the consensus service; the billing read
model consuming alongside).

A settlement is what it takes to pay a job, as an honest one-provider job does it since issue 16:
the consumer's jobs.Submit (escrow held), the consumer node's jobs.Attest naming the provider's
release-key hash, and the provider node's jobs.Attest naming it too and carrying the key: the
job's last attestation, which locks the job, releases the key and settles it (fees, provider
share, refund) in one tx: 3 txs. ``--release-tx`` measures the 4-tx form (both attestations
without the key, the last locks; the provider node's jobs.Release settles), what a job whose last
attester holds no key, or whose provider's wait ran out, still does; ``--no-release`` the 3-tx
settlement of before issue 16 (attestations without a release hash settle at the last one). A
transfer is one bank.Transfer.

Besides wall-clock rates (noisy on a shared machine), each round records the CPU time every
process used (from /proc: the consensus app, CometBFT, Kafka, billing, and this load generator),
per settlement and per transfer: a cost that other load on the machine does not change much. Both are sent the same way: pre-signed, over several
keep-alive connections (one signer's txs always on one connection, in nonce order), each
waiting for its CheckTx; throughput is counted from the first send to the commit of the last tx.
A transfer round sends as many txs as a settlement round (3 or 4 transfers a settlement): a round
also counts the wait for its first block and its last commit, and a transfer round a third as
long counted that wait three times over (until 2026-12-03: transfers read at 600-1,800/s from
round to round, ratios 0.18-0.38 in one session; equal rounds read 0.15-0.19).
The CPU of a round is read once billing's read model holds every op of it: the relay, Kafka and
billing work behind the chain, and read at the last commit, a short transfer round's tail was
counted in the settlement round after it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.common import median, metric, write
from rdx import toolchain as tc
from rdx.components import CometNode, KafkaBroker, ServiceProcess, free_port
from rdx.supervisor import genesis_app_state
from services.common.chain import ChainClient
from services.common.events import TOPICS
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Tx

CHAIN_ID = "rdx-bench-billing"
COMMIT, RESULT = "ab" * 32, "cd" * 32
KEY = "ef" * 32  # the provider's release key; the attestations name its hash
RELEASE = hashlib.sha256(bytes.fromhex(KEY)).hexdigest()


class Lane:
    """One consumer and one provider, their nodes, a listing and a grant: one connection's worth."""

    def __init__(self, i: int):
        self.i = i
        self.consumer, self.cnode = Identity.generate(f"c{i}"), Identity.generate(f"c{i}.node")
        self.provider, self.pnode = Identity.generate(f"p{i}"), Identity.generate(f"p{i}.node")
        self.nonces: dict[str, int] = {}
        self.jobs = 0

    def tx(self, who: Identity, type_: str, payload: dict) -> bytes:
        self.nonces[who.account] = self.nonces.get(who.account, 0) + 1
        return Tx.build(who, CHAIN_ID, type_, self.nonces[who.account], payload).encode()

    def settlements(self, n: int, form: str = "key") -> list[bytes]:
        """``n`` settlements of ``form``: "key" (3 txs, the key with the provider's attestation),
        "release" (4 txs, a separate jobs.Release) or "none" (3 txs, no release hash: before issue 16)."""
        out = []
        held = {"releases": {self.provider.account: RELEASE}} if form != "none" else {}
        key = {"key": KEY} if form == "key" else {}
        for _ in range(n):
            self.jobs += 1
            job = f"c{self.i}.j{self.jobs}"
            out += [self.tx(self.consumer, "jobs.Submit", {"id": job, "type": "aggregation", "max_price": 100,
                                                           "inputs": [{"asset": f"p{self.i}.a", "grant": f"c{self.i}.g"}]}),
                    self.tx(self.cnode, "jobs.Attest", {"job": job, "result_hash": RESULT, "records_used": 0,
                                                        "input_commitments": {}, **held}),
                    self.tx(self.pnode, "jobs.Attest", {"job": job, "result_hash": RESULT, "records_used": 7,
                                                        "input_commitments": {f"p{self.i}.a": COMMIT}, **held, **key})]
            if form == "release":
                out.append(self.tx(self.pnode, "jobs.Release", {"job": job, "key": KEY}))
        return out

    def transfers(self, n: int) -> list[bytes]:
        return [self.tx(self.consumer, "bank.Transfer", {"to": self.provider.account, "amount": 1}) for _ in range(n)]


async def setup(rpc: str, association: Identity, lanes: list[Lane]) -> None:
    async with ChainClient(rpc, CHAIN_ID) as c:
        sent = []
        for lane in lanes:
            for who, node, roles in ((lane.consumer, lane.cnode, ["consumer"]), (lane.provider, lane.pnode, ["provider"])):
                sent.append(await c.submit(association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key,
                    "node": {"public_key": node.public_key, "endpoint": "127.0.0.1:1"}}, wait=False))
            sent.append(await c.submit(association, "bank.Deposit", {"to": lane.consumer.account, "amount": 10**9,
                                                                     "reference": f"bench-{lane.i}"}, wait=False))
        for s in sent:
            await c.wait_for(s.tx_hash)
        for lane in lanes:
            setup_txs = [lane.tx(lane.provider, "assets.List", {
                "id": f"p{lane.i}.a", "level": "L2", "operations": ["aggregation"], "commitment": COMMIT,
                "price": {"model": "per_record", "amount": 3}, "metadata": example_metadata(f"Bench {lane.i}", row_count=30)}),
                lane.tx(lane.consumer, "access.Request", {"id": f"c{lane.i}.g", "asset": f"p{lane.i}.a",
                                                          "operations": ["aggregation"], "purpose": "bench",
                                                          "expires_at": 4_000_000_000, "max_runs": 10**6}),
                lane.tx(lane.provider, "access.Approve", {"id": f"c{lane.i}.g"})]
            for raw in setup_txs:
                checked = await c.broadcast(raw)
                assert checked["code"] == 0, checked
                last = checked["hash"]
            await c.wait_for(last)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (Linux /proc; fields 14 and 15 of
    stat), and this process's own (the load generator)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    out["load generator"] = sum(os.times()[:2])
    return out


# What billing's read model holds once it has applied every transfer and every settlement so far:
# a transfer books one transfer_in line, a bench job (one input) one usage line at its settlement.
BOOKED = {"transfer": "SELECT count(*) FROM ledger WHERE kind = 'transfer_in'",
          "settlement": "SELECT count(*) FROM usage"}


def booked(ledger_db: Path, kind: str, expected: int, timeout: float = 120.0) -> None:
    """Until billing's read model (read-only) holds ``expected`` ops of ``kind``."""
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(f"file:{ledger_db}?mode=ro", uri=True)
        try:
            held = conn.execute(BOOKED[kind]).fetchone()[0]
        except sqlite3.OperationalError:  # not made yet
            held = 0
        finally:
            conn.close()
        if held >= expected:
            return
        assert time.monotonic() < deadline, f"billing holds {held} of {expected} {kind}s after {timeout}s"
        time.sleep(0.02)


def timed(pids: dict[str, int], cpu: dict[str, list[dict[str, float]]], kind: str, ops: int, rpc: str,
          lanes_txs: list[list[bytes]], drained) -> float:
    """One round: its ops per second (to the last commit), and the CPU milliseconds per op each
    process used in it, up to ``drained()`` returning (billing has booked every op)."""
    before = cpu_seconds(pids)
    seconds = asyncio.run(round_(rpc, lanes_txs))
    drained()
    after = cpu_seconds(pids)
    cpu.setdefault(kind, []).append({name: 1000 * (after[name] - before[name]) / ops for name in after})
    return ops / seconds


async def round_(rpc: str, lanes_txs: list[list[bytes]]) -> float:
    """Seconds from the first send to the commit of every lane's last tx."""
    started = time.perf_counter()
    result = await loadgen.closed_loop(rpc, [[loadgen.broadcast_request(t) for t in txs] for txs in lanes_txs])
    assert result.accepted == result.sent, dict(result.rejected)
    async with ChainClient(rpc, CHAIN_ID) as c:
        for txs in lanes_txs:
            await c.wait_for(Tx.decode(txs[-1]).hash, timeout=120)
    return time.perf_counter() - started


async def all_completed(rpc: str, lanes: list[Lane]) -> None:
    """Every job the bench submitted settled (a refused tx in a block is not counted as refused by
    CheckTx): each one completed on chain, its escrow released."""
    async with ChainClient(rpc, CHAIN_ID) as c:
        for lane in lanes:
            for n in range(1, lane.jobs + 1):
                record = await c.query(f"/jobs/c{lane.i}.j{n}")
                assert record["status"] == "completed", (record["id"], record["status"], record.get("ended_reason"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--settlements", type=int, default=60, help="per lane per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    forms = parser.add_mutually_exclusive_group()
    forms.add_argument("--release-tx", action="store_true",
                       help="the 4-tx settlement: both attestations name the release hash (the last locks), "
                            "the provider node's jobs.Release settles")
    forms.add_argument("--no-release", action="store_true",
                       help="settle at the last attestation (3 txs, no lock and release): the settlement of before issue 16")
    args = parser.parse_args(argv)
    toolchain = tc.installed()
    with tempfile.TemporaryDirectory(prefix="rdx-bench-billing.") as tmp:
        root = Path(tmp)
        kafka = KafkaBroker(root / "kafka", toolchain, port=free_port(), controller_port=free_port())
        association = Identity.generate("association")
        abci = free_port()
        env = {"RDX_KAFKA_BOOTSTRAP": kafka.bootstrap, "RDX_STATE_ROOT": str(root / "state"), "RDX_CHAIN_ID": CHAIN_ID,
               "RDX_LOG_LEVEL": "WARNING"}
        app = ServiceProcess("consensus", free_port(), {**env, "RDX_ABCI_PORT": str(abci)}, root / "logs")
        node = CometNode(root / "node", toolchain, chain_id=CHAIN_ID, rpc_port=free_port(), p2p_port=free_port(),
                         abci_port=abci, timeout_commit="200ms", app_state=genesis_app_state(association))
        billing = None
        try:
            kafka.prepare()
            kafka.start()
            kafka.create_topics(TOPICS)
            app.start()
            node.prepare()
            node.start()
            billing = ServiceProcess("billing", free_port(), {**env, "RDX_COMETBFT_RPC": node.rpc_url}, root / "logs")
            billing.start()
            lanes = [Lane(i) for i in range(args.lanes)]
            asyncio.run(setup(node.rpc_url, association, lanes))
            ledger_db = root / "state" / "billing" / "ledger.sqlite"
            transfers = 20 * args.lanes
            asyncio.run(round_(node.rpc_url, [lane.transfers(20) for lane in lanes]))  # warm-up
            form = "release" if args.release_tx else "none" if args.no_release else "key"
            asyncio.run(round_(node.rpc_url, [lane.settlements(5, form) for lane in lanes]))
            per_round = args.settlements * args.lanes
            # A transfer round sends as many txs as a settlement round: of equal length, both rounds carry
            # the same fill and drain (the first block's wait, the last commit's) instead of the shorter
            # transfer round counting it three or four times over (its rate read low, the ratio high).
            txs = 4 if form == "release" else 3
            transfers_per_round = txs * per_round
            pids = {"consensus app": app.process.pid, "cometbft": node.process.pid, "kafka": kafka.process.pid,
                    "billing": billing.process.pid}
            booked(ledger_db, "transfer", transfers)  # the warm-up's tail is not the first round's
            booked(ledger_db, "settlement", sum(lane.jobs for lane in lanes))
            settle_rates, transfer_rates, cpu = [], [], {}
            for _ in range(args.rounds):  # alternating
                settle_rates.append(timed(pids, cpu, "settlement", per_round, node.rpc_url,
                                          [l.settlements(args.settlements, form) for l in lanes],
                                          lambda: booked(ledger_db, "settlement", sum(l.jobs for l in lanes))))
                transfers += transfers_per_round
                transfer_rates.append(timed(pids, cpu, "transfer", transfers_per_round, node.rpc_url,
                                            [l.transfers(txs * args.settlements) for l in lanes],
                                            lambda: booked(ledger_db, "transfer", transfers)))
            asyncio.run(all_completed(node.rpc_url, lanes))
        finally:
            for proc in (billing, node, app):
                if proc:
                    proc.stop()
            kafka.stop()
    s, t = median(settle_rates), median(transfer_rates)
    per_op = {kind: {name: round(median([r[name] for r in rounds]), 3) for name in rounds[0]}
              for kind, rounds in cpu.items()}
    cpu_s, cpu_t = (sum(per_op[k].values()) for k in ("settlement", "transfer"))
    metrics = [
        metric("settlements_per_s", s, "settlements/s", baseline_name="plain_transfers_per_s", baseline_value=t,
               bar=">= 0.27 (ratio; issue 16)", passed=s / t >= 0.27),
        metric("settlement_tx_per_s", txs * s, "tx/s", baseline_name="plain_transfer_tx_per_s", baseline_value=t,
               bar="report the ratio (no bar)"),
        metric("settlements_per_cpu_s", 1000 / cpu_s, "settlements/cpu-s", baseline_name="transfers_per_cpu_s",
               baseline_value=1000 / cpu_t, bar="report the ratio (no bar): what the rate ratio tends to when "
               "the machine's CPU is the bound"),
    ]
    notes = (f"one validator, timeout_commit 200ms; {args.lanes} lanes (connections), {per_round} settlements or "
             f"{transfers_per_round} transfers (as many txs) per round, {args.rounds} alternating rounds after a warm-up; a settlement is {txs} txs "
             + {"key": "(jobs.Submit, the consumer node's jobs.Attest naming the release hash, the provider node's "
                       "naming it and carrying the key: it locks, releases and settles)",
                "release": "(jobs.Submit, 2 jobs.Attest naming the release hash, the last locks; jobs.Release "
                           "settles; --release-tx)",
                "none": "(jobs.Submit + 2 jobs.Attest, the last settles; --no-release)"}[form]
             + f"; rates {settle_rates} vs {transfer_rates}; CPU ms per op by process (median of rounds) {per_op}; "
             f"load average {os.getloadavg()[0]:.2f} at the end; load generator, node, app, Kafka and billing share "
             f"{os.cpu_count()} cpus; each round's CPU read once billing had booked every op of it")
    path = write("billing", metrics, notes, args.out)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
