"""The exchange the compute benchmarks run jobs on: real components, all on this machine.

A Kafka broker (KRaft), a CometBFT node with the consensus service, and one compute node process
per member (``python -m services.compute``, RDX_WORKERS worker processes each), started fresh
for each phase of a benchmark so that each phase's peak memory is its own. Members, listings,
grants and jobs go through the chain as a member's own systems would send them; nothing is
mocked. A job's round trip (``run_job``): the consumer submits ``jobs.Submit``, every participant's
node loads its data (a provider's checked against its listing's Merkle commitment), runs the
protocol over the authenticated peer channels, attests, and the chain completes and settles the
job; the consumer's sealed result is then fetched from its own node and opened with its node key.

Timings of one job: ``job_s`` from submit to the chain's ``completed``; ``nodes_s`` from the first
participant's node starting the job to the last one computing (their journals' ``started_at`` and
``computed_at``); ``phases``: when each node first reported each phase, from the JobProgress
events the nodes emit on rdx.jobs.status.v1 (stamped by the node when it emits them).

Security: the keys are generated for the run and live under the run's temporary directory; every
listener is on loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.loadgen import parse_time
from rdx import toolchain as tc
from rdx.components import CometNode, KafkaBroker, ServiceProcess, compute_node, free_port
from rdx.supervisor import genesis_app_state
from services.common.chain import ChainClient, ChainError
from services.common.events import JOB_STATUS, TOPICS, Event
from services.common.identity import Identity
from services.compute import results

try:
    from services.common.listing import example_metadata
except ImportError:  # pragma: no cover
    def example_metadata(title, **_):
        return {"title": title}

CHAIN_ID = "rdx-bench"
PRICE = 100  # per input and run
FAR = 86_400  # grants expire a day after the run starts


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Run:
    job_s: float
    nodes_s: float
    result: dict  # the consumer's opened result
    phases: dict[str, dict[str, float]]  # member -> phase -> first report (epoch seconds)
    protocol_s: float | None = None  # the job type's protocol part, from the phases
    submitted_at: float = 0.0  # epoch seconds when jobs.Submit went out (phases are relative to it)
    latency: dict[str, float] = field(default_factory=dict)  # bench.compute.latency: the consumer's phases
    marks: dict[str, dict[str, float]] = field(default_factory=dict)  # member -> lifecycle mark -> epoch s


class Exchange:
    def __init__(self, root: Path, members: list[str], workers: int, batch: int):
        self.root, self.workers, self.batch = root, workers, batch
        self.toolchain = tc.installed()
        self.association = Identity.generate("association")
        self.kafka = KafkaBroker(root / "kafka", self.toolchain, port=free_port(), controller_port=free_port())
        abci = free_port()
        self.consensus = ServiceProcess("consensus", free_port(), {
            "RDX_KAFKA_BOOTSTRAP": self.kafka.bootstrap, "RDX_STATE_ROOT": str(root / "state"),
            "RDX_CHAIN_ID": CHAIN_ID, "RDX_ABCI_PORT": str(abci)}, root / "logs")
        self.comet = CometNode(root / "comet", self.toolchain, chain_id=CHAIN_ID, rpc_port=free_port(),
                               p2p_port=free_port(), abci_port=abci, timeout_commit="200ms",
                               app_state=genesis_app_state(self.association))
        self.members = {m: Identity.generate(m) for m in members}
        self.nodes_keys = {m: Identity.generate(f"{m}.node") for m in members}
        self.grpc = {m: free_port() for m in members}
        self.nodes: dict[str, ServiceProcess] = {}
        self.generation = 0
        self.grants = 0

    # -- processes --------------------------------------------------------------------------------
    def start(self) -> None:
        self.kafka.prepare()
        self.kafka.start()
        self.kafka.create_topics(TOPICS)
        self.consensus.start()
        self.comet.prepare()
        self.comet.start()

    def start_nodes(self, datasets: dict[str, Path]) -> None:
        """Fresh nodes for the members named, each with its datasets file."""
        self.stop_nodes()
        self.generation += 1
        for member, config in datasets.items():
            key = self.root / "keys" / f"{member}.node.json"
            self.nodes_keys[member].save(key)
            self.nodes[member] = compute_node(
                member, kafka=self.kafka.bootstrap, rpc_url=self.comet.rpc_url, chain_id=CHAIN_ID,
                state_root=self.root / "state", key_file=key, grpc_port=self.grpc[member], datasets=config,
                log_dir=self.root / "logs" / f"{member}-{self.generation}", workers=self.workers,
                psi_batch=self.batch, log_level="WARNING")
            self.nodes[member].start(timeout=120, wait=False)
        for node in self.nodes.values():
            node.wait_ready(120)
        # A node computes its datasets' commitments for /datasets when it starts: let that finish
        # first, so that it does not compete with the measured jobs.
        for member in self.nodes:
            deadline = time.monotonic() + 900
            while any(d["commitment"] is None and d["error"] is None for d in self.http(member, "/datasets")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{member}'s node did not summarise its datasets")
                time.sleep(0.5)

    def stop_nodes(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.nodes = {}

    def stop(self) -> None:
        self.stop_nodes()
        self.comet.stop()
        self.consensus.stop()
        self.kafka.stop()

    def http(self, member: str, path: str) -> dict:
        with urllib.request.urlopen(f"{self.nodes[member].url}{path}", timeout=10) as resp:
            return json.loads(resp.read())

    def histogram(self, member: str, name: str, **labels: str) -> tuple[float, int]:
        """(sum, count) of a histogram on a node's /metrics, for the series with ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.nodes[member].url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        total, count = 0.0, 0
        for family in text_string_to_metric_families(text):
            if family.name != name:
                continue
            for sample in family.samples:
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    if sample.name == f"{name}_sum":
                        total += sample.value
                    elif sample.name == f"{name}_count":
                        count += int(sample.value)
        return total, count

    def peak_rss_mib(self) -> dict[str, float]:
        """VmHWM of each node's process tree (the node and its worker processes), MiB."""
        out = {}
        for member, node in self.nodes.items():
            each = [round(_hwm_kib(p) / 1024) for p in _tree(node.process.pid)]
            out[member] = sum(each)
            out[f"{member}_processes"] = each
        return out

    # -- the chain --------------------------------------------------------------------------------
    def chain(self) -> ChainClient:
        return ChainClient(self.comet.rpc_url, CHAIN_ID)

    async def register(self, chain: ChainClient, consumer: str) -> None:
        for member, ident in self.members.items():
            await chain.submit(self.association, "members.Register", {
                "id": member, "name": member, "roles": ["consumer", "provider"], "public_key": ident.public_key,
                "node": {"public_key": self.nodes_keys[member].public_key,
                         "endpoint": f"127.0.0.1:{self.grpc[member]}"}})
        await chain.submit(self.association, "bank.Deposit", {"to": consumer, "amount": 10**12, "reference": "bench"})

    async def list_and_grant(self, chain: ChainClient, consumer: str, asset: str, commitment: str,
                             operations: list[str], runs: int) -> str:
        """List ``asset`` (``<owner>.<name>``) with its commitment; the consumer's grant, approved."""
        owner = asset.split(".", 1)[0]
        await chain.submit(self.members[owner], "assets.List", {
            "id": asset, "level": "L3", "operations": operations, "commitment": commitment,
            "price": {"model": "fixed", "amount": PRICE}, "metadata": example_metadata(asset)})
        self.grants += 1
        grant = f"g{self.grants}-{asset}"
        await chain.submit(self.members[consumer], "access.Request", {
            "id": grant, "asset": asset, "operations": operations, "purpose": "benchmark",
            "expires_at": int(time.time()) + FAR, "max_runs": runs})
        await chain.submit(self.members[owner], "access.Approve", {"id": grant})
        return grant

    async def run_job(self, chain: ChainClient, consumer: str, job: str, type_: str, inputs: list[dict],
                      params: dict, until: tuple[str, str] | None = None) -> Run:
        """One job through the chain; ``until`` (member, phase): wait for that JobProgress event."""
        started = time.time()
        await chain.submit(self.members[consumer], "jobs.Submit", {
            "id": job, "type": type_, "inputs": inputs, "params": params,
            "max_price": PRICE * len(inputs), "timeout_s": 7200}, wait=False)
        while True:
            record = await chain.query(f"/jobs/{job}")
            if record and record["status"] not in ("running", "locked"):  # locked: keys not yet released
                break
            await asyncio.sleep(0.1)
        # The job's end as the chain decided it, not as this poll saw it (up to 0.1 s later: a fifth
        # of a sub-second job): the commit time of the block that ended it, which the next block's
        # header carries (BFT time: its validators' precommit times; CometBFT makes that block at
        # once, since the ending changed the app hash).
        job_s = await committed_at(chain, record["ended_height"]) - started
        if record["status"] != "completed":
            raise RuntimeError(f"job {job} {record['status']}: {record.get('ended_reason')}")
        rows = [self.http(m, f"/jobs/{job}") for m in record["participants"]]
        nodes_s = max(r["computed_at"] for r in rows) - min(r["started_at"] for r in rows)
        body = None
        for _ in range(100):  # the consumer's node releases the result once it has seen JobCompleted
            try:
                body = self.http(consumer, f"/jobs/{job}/result")
                break
            except urllib.error.HTTPError:
                await asyncio.sleep(0.1)
        if body is None:
            raise RuntimeError(f"job {job}: the consumer's node did not release the result")
        opened = results.open_envelope(self.nodes_keys[consumer], body["envelope"])
        phases = await self.phases(job, until) if until else {}
        return Run(job_s, nodes_s, opened["result"], phases, submitted_at=started)

    async def phases(self, job: str, until: tuple[str, str], timeout: float = 30.0) -> dict[str, dict[str, float]]:
        """member -> phase -> when its node first reported it, read from rdx.jobs.status.v1 (the
        nodes publish in the background, so this waits for ``until``'s event)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            part = TopicPartition(JOB_STATUS, 0)  # the bench makes its topics with one partition
            consumer.assign([part])
            await consumer.seek_to_beginning(part)
            out: dict[str, dict[str, float]] = {}
            deadline = time.monotonic() + timeout
            while until[1] not in out.get(until[0], {}):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job}: no {until[1]} event from {until[0]} within {timeout:.0f}s")
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for m in messages:
                        event = Event.decode(m.value)
                        if event.type == "JobProgress" and event.data.get("job") == job:
                            out.setdefault(event.data["member"], {}).setdefault(
                                event.data["phase"], event.occurred_at.timestamp())
            return out
        finally:
            await consumer.stop()


async def committed_at(chain: ChainClient, height: int, timeout: float = 10.0) -> float:
    """When block ``height`` was committed (unix seconds): the time in the header of the block after it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return parse_time((await chain.rpc("header", height=str(height + 1)))["header"]["time"])
        except ChainError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for c in children:
        pids.extend(_tree(int(c)))
    return pids


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
