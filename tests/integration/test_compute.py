"""Compute nodes on the real chain and broker: PSI and PSI-cardinality from listing to settlement,
the privacy properties (canaries, commitments, peer authentication) and the faults (a node
killed mid-job, a suspend, a restart).

Two members' nodes run as real processes (``python -m services.compute``); the telco's node is
reached through a TCP proxy that records every byte the two nodes exchange. A third member
("alpha") has no node process: the test itself plays its node, in-process, to try forged keys
and to read (decrypted) exactly what the telco's node sends to a peer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import threading
import time
import urllib.request
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition

from test_catalog import commit_times
from rdx.components import LOOPBACK, ServiceProcess, compute_node, free_port
from services.common.chain import ChainClient
from services.common.events import CHAIN_EVENTS, JOB_STATUS, Event
from services.common.kafka import EventProducer
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.compute import peer, psi_kernel, results
from services.compute.chainview import ChainView
from services.compute.commitment import commitment_of
from services.compute.datasets import Dataset, DatasetConfig, Datasets
from services.compute.jobtypes.base import JobContext, PeerRefused
from services.compute.jobtypes.psi import PsiJob

TAG = os.urandom(3).hex()
BANK, TELCO, ALPHA = f"bank-{TAG}", f"telco-{TAG}", f"alpha-{TAG}"
CANARIES = {  # planted in the inputs; none may ever be seen outside its owner's node
    "bank_key": f"CANARY-BANK-KEY-{TAG}", "bank_name": f"CANARY-BANK-NAME-{TAG}",
    "telco_key": f"CANARY-TELCO-KEY-{TAG}", "telco_plan": f"CANARY-TELCO-PLAN-{TAG}",
    "alpha_key": f"CANARY-ALPHA-KEY-{TAG}",
}
FAR = int(time.time()) + 86_400
PRICE = 100


def phones(start: int, n: int) -> list[str]:
    return [f"+86-1{i:010d}" for i in range(start, start + n)]


# --------------------------------------------------------------------------------------------------
# the harness


async def job_trail(nodes: dict[str, ServiceProcess], node_job, job: str, lines: int = 15) -> str:
    """Each node's view of ``job`` (``node_job(member, job)``) and its last log lines naming it, for
    a failing wait: a failure's CI output is all that is kept of a run (the nodes' logs go with its
    temporary directory). The logs hold no data values (the canary tests)."""
    out = []
    for member, node in nodes.items():
        try:
            row = await node_job(member, job)
        except (OSError, ValueError) as exc:  # down (a kill test's), or not answering JSON: the trail goes on
            row = f"(no answer: {type(exc).__name__})"
        out.append(f"--- {member}: {row}")
        try:
            text = node.process.log_path.read_text(errors="replace")
        except (AttributeError, OSError):
            continue
        out += [_brief(line) for line in text.splitlines() if job in line][-lines:]
    return "\n".join(out)


def _brief(line: str) -> str:
    """A node's JSON log line as ``time level logger: message``."""
    try:
        r = json.loads(line)
        return f"{r['ts']} {r['level']} {r['logger']}: {r['message']}"
    except (ValueError, KeyError, TypeError):
        return line


class TcpProxy:
    """Forwards a port to another and records every byte in both directions (its own thread).
    ``hang()`` stops passing bytes (the connections stay open); ``close(i)`` breaks the i-th
    connection made through it, in the order they were accepted."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self.captured = bytearray()
        self.connections: list[list[asyncio.StreamWriter]] = []  # per connection: client side, target side
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TcpProxy":
        self._thread.start()
        self._ready.wait(5)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, LOOPBACK, self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        sides = [writer]
        self.connections.append(sides)  # at accept: the order the client connected in
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target)
        except OSError:
            writer.close()
            return
        sides.append(up_writer)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    self.captured += data
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def hang(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def close(self, i: int) -> None:
        for side in self.connections[i]:
            self._loop.call_soon_threadsafe(side.close)

    def stop(self) -> None:
        async def shutdown() -> None:  # the connections' tasks ended before the loop: none left pending
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@dataclass
class Net:
    chain: ChainClient
    rpc_url: str
    chain_id: str
    kafka: str
    association: Identity
    root: Path
    ids: dict[str, Identity] = field(default_factory=dict)
    node_ids: dict[str, Identity] = field(default_factory=dict)
    nodes: dict[str, ServiceProcess] = field(default_factory=dict)
    datasets: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    proxy: TcpProxy | None = None
    grants: int = 0

    async def tx(self, who: Identity, type_: str, payload: dict):
        return await self.chain.submit(who, type_, payload)

    def http(self, member: str, path: str):
        try:
            with urllib.request.urlopen(f"{self.nodes[member].url}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    async def node_job(self, member: str, job: str) -> dict | None:
        status, body = await asyncio.to_thread(self.http, member, f"/jobs/{job}")
        return body if status == 200 else None

    async def balance(self, member: str) -> int:
        return await self.chain.query(f"/bank/balance/{member}") or 0

    async def list_asset(self, asset: str, commitment: str, ops=("psi", "psi_cardinality"), min_group: int = 1):
        await self.tx(self.ids[TELCO], "assets.List", {
            "id": asset, "level": "L3", "operations": list(ops), "commitment": commitment,
            "price": {"model": "fixed", "amount": PRICE}, "min_group_size": min_group,
            "metadata": example_metadata(f"Subscribers {asset}")})

    async def grant(self, consumer: str, asset: str) -> str:
        self.grants += 1
        gid = f"g-{TAG}-{self.grants}"
        await self.tx(self.ids[consumer], "access.Request", {
            "id": gid, "asset": asset, "operations": ["psi", "psi_cardinality"], "purpose": "joint marketing",
            "expires_at": FAR, "max_runs": 10})
        await self.tx(self.ids[TELCO], "access.Approve", {"id": gid})
        return gid

    async def submit(self, job: str, type_: str, asset: str, dataset: str, consumer: str = BANK,
                     timeout_s: int = 120, max_price: int = 150) -> None:
        gid = await self.grant(consumer, asset)
        await self.tx(self.ids[consumer], "jobs.Submit", {
            "id": job, "type": type_, "inputs": [{"asset": asset, "grant": gid}],
            "params": {"dataset": dataset, "key": "phone"}, "max_price": max_price, "timeout_s": timeout_s})

    async def wait_chain(self, job: str, statuses=("completed", "failed", "aborted"), timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = await self.chain.query(f"/jobs/{job}")
            if record and record["status"] in statuses:
                return record
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job} not {statuses} within {timeout}s: {record}\n"
                             f"{await job_trail(self.nodes, self.node_job, job)}")

    async def wait_node(self, member: str, job: str, pred, timeout: float = 60, poll: float = 0.05) -> dict:
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = await self.node_job(member, job)
            if row and pred(row):
                return row
            await asyncio.sleep(poll)
        raise AssertionError(f"{member}'s node: job {job} not as expected within {timeout}s: {row}\n"
                             f"{await job_trail(self.nodes, self.node_job, job)}")

    def start_node(self, member: str) -> None:
        self.nodes[member].start(timeout=90)


def _write_datasets(root: Path) -> dict[str, dict[str, list[str]]]:
    """bank: a CSV of customers; telco: a Parquet file of subscribers and a SQLite table; with canaries."""
    bank_dir, telco_dir = root / "bank-data", root / "telco-data"
    bank_dir.mkdir(parents=True)
    telco_dir.mkdir(parents=True)
    bank = phones(0, 3000) + [CANARIES["bank_key"]]
    telco = phones(2000, 4000) + [CANARIES["telco_key"]]
    big_bank, big_telco = phones(0, 40_000), phones(20_000, 40_000)
    with open(bank_dir / "customers.csv", "w") as f:
        f.write("phone,name\n")
        for i, p in enumerate(bank):
            f.write(f"{p},{CANARIES['bank_name'] if i == 7 else f'customer {i}'}\n")
    with open(bank_dir / "big.csv", "w") as f:
        f.write("phone\n" + "\n".join(big_bank) + "\n")
    plans = [CANARIES["telco_plan"] if i == 11 else "prepaid" for i in range(len(telco))]
    pq.write_table(pa.table({"phone": telco, "plan": plans}), telco_dir / "subs.parquet")
    db = sqlite3.connect(telco_dir / "big.db")
    db.execute("CREATE TABLE subscribers (phone TEXT, tenure INTEGER)")
    db.executemany("INSERT INTO subscribers VALUES (?, ?)", [(p, i % 120) for i, p in enumerate(big_telco)])
    db.commit()
    db.close()
    with open(telco_dir / "stale.csv", "w") as f:
        f.write("phone\n" + "\n".join(phones(0, 50)) + "\n")
    (bank_dir / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "customers", "format": "csv", "path": "customers.csv", "key": "phone"},
        {"id": "big", "format": "csv", "path": "big.csv", "key": "phone"}]}))
    (telco_dir / "datasets.json").write_text(json.dumps({"datasets": [
        {"id": "subs", "asset": f"{TELCO}.subs", "format": "parquet", "path": "subs.parquet", "key": "phone"},
        {"id": "big", "asset": f"{TELCO}.big", "format": "sqlite", "path": "big.db", "table": "subscribers",
         "key": "phone"},
        {"id": "big2", "asset": f"{TELCO}.big2", "format": "sqlite", "path": "big.db", "table": "subscribers",
         "key": "phone"},
        {"id": "stale", "asset": f"{TELCO}.stale", "format": "csv", "path": "stale.csv", "key": "phone"}]}))
    return {"bank": {"customers": bank, "big": big_bank}, "telco": {"subs": telco, "big": big_telco}}


def _commitment(member_dir: Path, dataset: str) -> str:
    return Datasets.from_path(member_dir / "datasets.json").get(dataset).summary()[0]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def net(chain, kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("compute")
    client = ChainClient(chain.rpc_url, chain.chain_id)
    n = Net(client, chain.rpc_url, chain.chain_id, kafka.bootstrap, chain.association, root)
    n.datasets = _write_datasets(root)
    grpc_ports = {BANK: free_port(), TELCO: free_port()}
    n.proxy = TcpProxy(grpc_ports[TELCO]).start()
    endpoints = {BANK: f"{LOOPBACK}:{grpc_ports[BANK]}", TELCO: f"{LOOPBACK}:{n.proxy.port}",
                 ALPHA: f"{LOOPBACK}:{free_port()}"}
    for member in (BANK, TELCO, ALPHA):
        n.ids[member] = Identity.generate(member)
        n.node_ids[member] = Identity.generate(f"{member}.node")
        n.node_ids[member].save(root / "keys" / f"{member}.node.json")
        await n.tx(chain.association, "members.Register", {
            "id": member, "name": member, "roles": ["consumer", "provider"], "public_key": n.ids[member].public_key,
            "node": {"public_key": n.node_ids[member].public_key, "endpoint": endpoints[member]}})
        await n.tx(chain.association, "bank.Deposit", {"to": member, "amount": 10_000, "reference": f"dep-{member}"})
    telco_dir = root / "telco-data"
    await n.list_asset(f"{TELCO}.subs", _commitment(telco_dir, "subs"))
    await n.list_asset(f"{TELCO}.big", _commitment(telco_dir, "big"))
    await n.list_asset(f"{TELCO}.big2", _commitment(telco_dir, "big2"))
    # listed with the commitment of other data than the node holds: the node must refuse it
    await n.list_asset(f"{TELCO}.stale", commitment_of(["phone"], [(p,) for p in phones(0, 51)]))
    for member, data_dir in ((BANK, "bank-data"), (TELCO, "telco-data")):
        n.nodes[member] = compute_node(
            member, kafka=kafka.bootstrap, rpc_url=chain.rpc_url, chain_id=chain.chain_id, state_root=root / "state",
            key_file=root / "keys" / f"{member}.node.json", grpc_port=grpc_ports[member],
            datasets=root / data_dir / "datasets.json", log_dir=root / "logs" / member,
            workers=1, peer_wait_s=4, max_attempts=3, psi_batch=1024, shutdown_grace_s=5)
        n.nodes[member].start(timeout=90, wait=False)
    for node in n.nodes.values():
        node.wait_ready(90)
    try:
        yield n
    finally:
        for node in n.nodes.values():
            node.stop()
        n.proxy.stop()
        await client.close()


def _open_result(n: Net, member: str, job: str) -> dict:
    status, body = n.http(member, f"/jobs/{job}/result")
    assert status == 200, body
    return results.open_envelope(n.node_ids[member], body["envelope"])


# --------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("type_", ["psi", "psi_cardinality"])
async def test_psi_job_runs_end_to_end_and_settles(net, type_):
    job = f"{type_.replace('_', '-')}-{TAG}"
    before = {m: await net.balance(m) for m in (BANK, TELCO)}
    started = time.monotonic()
    await net.submit(job, type_, f"{TELCO}.subs", "customers")
    record = await net.wait_chain(job)
    elapsed = time.monotonic() - started
    assert record["status"] == "completed", record
    bank_row, telco_row = await net.node_job(BANK, job), await net.node_job(TELCO, job)
    # both nodes attested the same hash, which the chain recorded; the telco's input commitment too
    assert bank_row["result_hash"] == telco_row["result_hash"] == record["result_hash"]
    assert record["attestations"][TELCO]["input_commitments"] == {f"{TELCO}.subs": record["inputs"][0]["commitment"]}
    assert record["attestations"][BANK]["input_commitments"] == {}
    await net.wait_node(BANK, job, lambda r: r["status"] == "completed" and r["settlement"])
    # settled: the provider paid its fixed price less the association's 2 %, the rest refunded
    assert await net.balance(BANK) == before[BANK] - PRICE
    assert await net.balance(TELCO) == before[TELCO] + PRICE - PRICE * 2 // 100
    assert await net.chain.query(f"/bank/escrow/{job}") is None
    # the consumer's result, opened with its node key, equals the intersection computed in the clear
    bank_keys, telco_keys = set(net.datasets["bank"]["customers"]), set(net.datasets["telco"]["subs"])
    clear = sorted(bank_keys & telco_keys)
    opened = _open_result(net, BANK, job)
    assert opened["type"] == type_ and opened["job"] == job
    if type_ == "psi":
        assert opened["result"]["intersection"] == clear
    else:
        assert opened["result"] == {"cardinality": len(clear), "consumer_set_size": len(bank_keys),
                                    "provider_set_size": len(telco_keys)}
    # the provider's node holds no result
    assert net.http(TELCO, f"/jobs/{job}/result")[0] == 404
    print(f"{type_} 3001 x 4001 from submit to settled on chain: {elapsed:.2f}s")


async def test_a_dataset_that_does_not_match_its_listing_is_refused(net):
    job = f"stale-{TAG}"
    before = await net.balance(BANK)
    await net.submit(job, "psi", f"{TELCO}.stale", "customers")
    record = await net.wait_chain(job)
    assert record["status"] == "failed"
    assert "does not match the commitment of its listing" in record["ended_reason"]
    assert await net.balance(BANK) == before  # refunded in full
    row = await net.wait_node(TELCO, job, lambda r: r["status"] == "failed")
    assert row["result_hash"] is None
    assert net.http(BANK, f"/jobs/{job}/result")[0] in (404, 409)


async def test_a_peer_with_an_unknown_key_is_refused_and_what_a_peer_sends_holds_no_canary(net):
    """The test plays alpha's node in-process: forged identities are refused by the telco's node;
    with alpha's real node key it runs the consumer side and records the plaintext of every frame
    the telco's node sent it."""
    job = f"alpha-{TAG}"
    await net.submit(job, "psi", f"{TELCO}.subs", "mine", consumer=ALPHA)
    await net.wait_node(TELCO, job, lambda r: r["status"] in ("pending", "running"))
    view = ChainView(net.chain)
    telco_node = (await net.chain.query(f"/members/{TELCO}"))["node"]
    node_ref = peer.NodeRef(telco_node["account"], telco_node["endpoint"])
    forged = Identity.generate(f"{ALPHA}.node")  # the right account, a key the chain does not know
    with pytest.raises(PeerRefused, match="authentication"):
        await peer.connect(forged, net.chain_id, view, job, TELCO, node_ref)
    stranger = Identity.generate(f"mallory-{TAG}.node")  # an account that is not on chain at all
    with pytest.raises(PeerRefused, match="not a peer"):
        await peer.connect(stranger, net.chain_id, view, job, TELCO, node_ref)

    alpha_keys = phones(3500, 1000) + [CANARIES["alpha_key"]]
    mine = net.root / "alpha.csv"
    mine.write_text("phone\n" + "\n".join(alpha_keys) + "\n")
    local = Datasets([Dataset(DatasetConfig(id="mine", format="csv", path=mine, key="phone"))])
    frames: list[tuple[str, bytes]] = []
    stored: dict[str, bytes] = {}
    spec, _ = await view.spec(job)

    async def channel(other: str):
        return await peer.connect(net.node_ids[ALPHA], net.chain_id, view, job, other, node_ref,
                                  tap=lambda direction, frame: frames.append((direction, frame)))

    async def load_local(name, columns):
        return await asyncio.to_thread(local.get(name).load, columns)

    async def commit_result(result: bytes) -> str:
        stored["result"] = result
        return results.commit(result)[0]

    async def compute(fn, *args):
        return await asyncio.to_thread(fn, *args)

    ctx = JobContext(spec, ALPHA, channel=channel, load_input=None, load_local=load_local,
                     dataset_key=lambda _: "phone", commit_result=commit_result, progress=lambda *a: None,
                     compute=compute, workers=1, batch=512)
    job_type = PsiJob()
    outcome = await job_type.run(ctx)
    await net.tx(net.node_ids[ALPHA], "jobs.Attest", {"job": job, "result_hash": outcome.result_hash,
                                                      "records_used": outcome.records_used, "input_commitments": {},
                                                      "records": dict(outcome.records),
                                                      "releases": dict(outcome.releases)})
    record = await net.wait_chain(job)
    assert record["status"] == "completed" and "result" not in stored  # nothing matched before the release
    await job_type.finish(ctx, outcome.pending, {m: bytes.fromhex(k) for m, k in record["releases"].items()})  # the key on chain
    assert json.loads(stored["result"])["intersection"] == sorted(set(alpha_keys) & set(net.datasets["telco"]["subs"]))
    received = b"".join(f for d, f in frames if d == "received")
    assert len(received) > 32 * 4000  # the telco's whole masked set came through
    for name in ("telco_key", "telco_plan"):
        canary = CANARIES[name].encode()
        for form in (canary, hashlib.sha256(canary).digest(), hashlib.sha256(canary).hexdigest().encode(),
                     psi_kernel.hash_to_curve([canary])[0], psi_kernel.hash_to_curve([canary])[0][:16]):
            assert form not in received, name
    for key in net.datasets["telco"]["subs"][:50]:  # nor any plain key or its unmasked point
        assert key.encode() not in received and psi_kernel.hash_to_curve([key.encode()])[0] not in received
    log = net.nodes[TELCO].process.log_path.read_text()
    assert log.count("refused a peer session") >= 2


# --------------------------------------------------------------------------------------------------
# faults


async def _running_with_progress(n: Net, job: str, timeout: float = 30) -> None:
    for member in (BANK, TELCO):
        await n.wait_node(member, job, lambda r: r["status"] == "running" and (r["progress"] or {}).get("done", 0) > 0,
                          timeout=timeout)


async def test_a_forged_kill_switch_on_kafka_does_not_stop_a_running_job(net):
    """JobAborted, JobFailed, JobCompleted, MemberSuspended and AssetSuspended published to the chain
    topic by someone other than the chain (one of them under the id of the next block's first
    event): each node checks them against its own chain node and refuses them as dead letters
    while the job runs on (a forged end would have stopped it, or closed its journal row with no
    result), and the job completes."""
    job = f"forged-kill-{TAG}"
    await net.submit(job, "psi", f"{TELCO}.big", "big", timeout_s=300)
    await _running_with_progress(net, job)
    height = await net.chain.height()
    forged = [("JobAborted", f"job:{job}", {"job": job, "type": "psi", "consumer": BANK, "reason": "forged"}),
              ("JobFailed", f"job:{job}", {"job": job, "type": "psi", "consumer": BANK, "reason": "forged"}),
              ("JobCompleted", f"job:{job}", {"job": job, "type": "psi", "consumer": BANK, "reason": "completed",
                                                "result_hash": "ab" * 32}),
              ("MemberSuspended", f"member:{TELCO}", {"member": TELCO, "reason": "forged"}),
              ("AssetSuspended", f"asset:{TELCO}.big", {"asset": f"{TELCO}.big", "reason": "forged"})]
    producer = EventProducer(net.kafka, "forger")
    await producer.start()
    try:
        for i, (type_, entity, data) in enumerate(forged):
            h = height + (1 if i == 0 else 0)
            await producer.publish(CHAIN_EVENTS, Event(id=f"{h}/0/{i}", type=type_, entity=entity, source="consensus",
                                                       data={**data, "height": h}))
    finally:
        await producer.stop()
    dbs = {m: sqlite3.connect(net.root / "state" / f"compute-{m}" / "node.sqlite") for m in (BANK, TELCO)}
    deadline = time.monotonic() + 30
    refused = {m: 0 for m in dbs}
    while time.monotonic() < deadline and min(refused.values()) < len(forged):
        refused = {m: db.execute("SELECT count(*) FROM dead_letters WHERE reason = 'not_on_chain'").fetchone()[0]
                   for m, db in dbs.items()}
        await asyncio.sleep(0.1)
    assert min(refused.values()) >= len(forged), refused
    for member in (BANK, TELCO):  # every forged record handled, and the job runs on
        assert (await net.node_job(member, job))["status"] in ("running", "completed"), member
    record = await net.wait_chain(job, timeout=300)
    assert record["status"] == "completed", record


async def test_suspending_an_asset_aborts_its_running_job_within_one_second(net):
    job = f"suspend-{TAG}"
    before = await net.balance(BANK)
    await net.submit(job, "psi", f"{TELCO}.big", "big")
    await _running_with_progress(net, job)
    sent = time.time()
    committed = await net.tx(net.association, "assets.Suspend", {"id": f"{TELCO}.big", "reason": "kill switch drill"})
    # When the suspending block was decided (the next header's time). Its own header's time is the
    # previous block's decision, which with blocks made on demand can be a second before the send.
    block_time = (await commit_times(net.chain, {committed.height}))[committed.height]
    rows = {m: await net.wait_node(m, job, lambda r: r["status"] == "aborted", timeout=5, poll=0.02)
            for m in (BANK, TELCO)}
    record = await net.wait_chain(job)
    assert record["status"] == "aborted" and "suspended" in record["ended_reason"]
    for member, row in rows.items():
        after_block = row["ended_at"] - block_time
        # stopped_ms is None when the node had already stopped before its own copy of the event was
        # confirmed: its peer stopped first and the chain said the job was aborted.
        print(f"{member}: stopped {after_block * 1000:.0f} ms after the suspending block was decided, "
              f"{(row['ended_at'] - sent) * 1000:.0f} ms after broadcast, "
              f"{row['stopped_ms']} ms after the event reached the node")
        assert after_block < 1.0, (member, after_block)
        assert row["stopped_ms"] is None or row["stopped_ms"] < 500
    assert any(row["stopped_ms"] is not None for row in rows.values())  # the kill switch itself stopped one
    assert await net.balance(BANK) == before  # the chain refunded the escrow
    assert net.http(BANK, f"/jobs/{job}/result")[0] == 409


async def test_killing_a_node_mid_job_fails_the_job_and_a_restart_fails_its_journaled_job_cleanly(net):
    job = f"kill-{TAG}"
    before = await net.balance(BANK)
    await net.submit(job, "psi", f"{TELCO}.big2", "big")
    await _running_with_progress(net, job)
    killed = time.monotonic()
    net.nodes[TELCO].kill()
    record = await net.wait_chain(job, timeout=60)
    took = time.monotonic() - killed
    assert record["status"] == "failed" and "peer lost" in record["ended_reason"], record
    print(f"job failed {took:.1f}s after its provider's node was killed: {record['ended_reason']}")
    assert took < 120  # its timeout
    assert await net.balance(BANK) == before  # refunded in full
    row = await net.node_job(BANK, job)
    assert row["status"] == "failed" and row["result_hash"] is None
    assert net.http(BANK, f"/jobs/{job}/result")[0] == 409  # nothing partial released
    # the telco's node comes back: its journal still says running; it learns the chain's verdict
    net.start_node(TELCO)
    row = await net.wait_node(TELCO, job, lambda r: r["status"] == "failed", timeout=30)
    assert row["result_hash"] is None


async def test_a_node_restarted_mid_job_resumes_it(net):
    job = f"resume-{TAG}"
    await net.submit(job, "psi", f"{TELCO}.big2", "big")
    await _running_with_progress(net, job)
    net.nodes[TELCO].kill()
    net.start_node(TELCO)  # back within the consumer's peer-wait window: the job runs again
    record = await net.wait_chain(job, timeout=90)
    assert record["status"] == "completed", record
    row = await net.wait_node(TELCO, job, lambda r: r["status"] == "completed")
    assert row["attempt"] >= 2  # a fresh protocol run after the restart
    await net.wait_node(BANK, job, lambda r: r["status"] == "completed")  # its result opened from the released key
    opened = _open_result(net, BANK, job)
    assert opened["result"]["intersection"] == sorted(set(net.datasets["bank"]["big"]) & set(net.datasets["telco"]["big"]))


async def _event_offset(bootstrap: str, job: str) -> tuple[TopicPartition, int]:
    """Where the chain topic holds ``job``'s JobAuthorized."""
    async with aclosing(_records(bootstrap, CHAIN_EVENTS)) as records:  # its consumer stopped on return
        async for tp, m in records:
            try:
                event = Event.decode(m.value)
            except Exception:  # noqa: BLE001 - other tests' hostile records share the topic
                continue
            if event.type == "JobAuthorized" and event.data.get("job") == job:
                return tp, m.offset
    raise AssertionError(f"no JobAuthorized for {job} on {CHAIN_EVENTS}")


async def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp) or -1
    finally:
        await consumer.stop()


async def test_a_node_restored_from_a_backup_older_than_a_job_takes_the_job_up_from_the_chain(net):
    """docs/operations.md, "Restore everything": the node's consumer group has read past the job's
    JobAuthorized, and the restored journal does not hold the job: only the chain can tell the node."""
    db = net.root / "state" / f"compute-{TELCO}" / "node.sqlite"
    backup = net.root / "telco-node-backup.sqlite"
    source = sqlite3.connect(db)
    with sqlite3.connect(backup) as copy:
        source.backup(copy)  # SQLite's online backup: a consistent copy of a live database
    source.close()
    job = f"restored-{TAG}"
    await net.submit(job, "psi", f"{TELCO}.big2", "big")
    await _running_with_progress(net, job)
    net.nodes[TELCO].kill()
    tp, offset = await _event_offset(net.kafka, job)
    assert await _committed(net.kafka, f"compute-{TELCO}", tp) > offset  # no event will bring the job back
    for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    backup.replace(db)
    net.start_node(TELCO)
    record = await net.wait_chain(job, timeout=90)
    assert record["status"] == "completed", record
    row = await net.wait_node(TELCO, job, lambda r: r["status"] == "completed")
    assert row["attempt"] >= 1
    await net.wait_node(BANK, job, lambda r: r["status"] == "completed")
    opened = _open_result(net, BANK, job)
    assert opened["result"]["intersection"] == sorted(set(net.datasets["bank"]["big"]) & set(net.datasets["telco"]["big"]))
    # The restored journal numbers the job's status events from 1 again, as the lost instance did:
    # they must not take its ids (a consumer that recognises ids would drop them).
    deadline = time.monotonic() + 30
    while True:
        ours = await _status_events(net.kafka, job, TELCO)
        if any(e.data.get("status") == "completed" for e in ours) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    ids = [e.id for e in ours]
    assert any(e.data.get("status") == "completed" for e in ours), ids
    assert len(ids) == len(set(ids)), ids
    assert len({i.split("/")[2] for i in ids}) == 2, ids  # the lost instance's and the restored one's


async def _status_events(bootstrap: str, job: str, member: str) -> list[Event]:
    """``member``'s status events about ``job`` on rdx.jobs.status.v1, in order."""
    out = []
    async with aclosing(_records(bootstrap, JOB_STATUS)) as records:
        async for _, m in records:
            try:
                event = Event.decode(m.value)
            except Exception:  # noqa: BLE001 - other tests' hostile records may share the topic
                continue
            if event.data.get("job") == job and event.data.get("member") == member:
                out.append(event)
    return out


# --------------------------------------------------------------------------------------------------
# canaries, last: everything the tests above caused


async def test_no_canary_in_kafka_logs_chain_or_the_wire(net):
    forms = {}
    for name, value in CANARIES.items():
        raw = value.encode()
        forms[name] = [raw, hashlib.sha256(raw).hexdigest().encode(), base64.b64encode(raw)]
    # every message on the chain-events and job-status topics
    seen_status = 0
    for topic in (CHAIN_EVENTS, JOB_STATUS):
        blob = await _topic_bytes(net.kafka, topic)
        if topic == JOB_STATUS:
            seen_status = len(blob)
        for name, fs in forms.items():
            assert not any(f in blob for f in fs), (topic, name)
    assert seen_status > 0
    # both nodes' logs
    for member, node in net.nodes.items():
        text = node.process.log_path.read_bytes()
        assert b"job " in text
        for name, fs in forms.items():
            assert not any(f in text for f in fs), (member, name)
    # every transaction in every block, decoded
    txs = await _chain_txs(net.chain)
    assert b"jobs.Attest" in txs
    for name, fs in forms.items():
        assert not any(f in txs for f in fs), name
    # the bytes on the wire between the two nodes
    wire = bytes(net.proxy.captured)
    assert len(wire) > 100_000
    for name, fs in forms.items():
        assert not any(f in wire for f in fs), name
    for key in net.datasets["telco"]["subs"][:20] + net.datasets["bank"]["customers"][:20]:
        assert key.encode() not in wire


async def _records(bootstrap: str, topic: str):
    """Every record of ``topic`` so far, as (partition, record)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        while any([await consumer.position(p) < end[p] for p in parts]):
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                for m in messages:
                    yield tp, m
    finally:
        await consumer.stop()


async def _topic_bytes(bootstrap: str, topic: str) -> bytes:
    # Raw bytes, every record: the session's broker also holds other tests' hostile records (not
    # events at all), and a canary must not be in those either.
    return b"".join([m.value or b"" async for _, m in _records(bootstrap, topic)])


async def _chain_txs(chain: ChainClient) -> bytes:
    """Every transaction in every block so far, decoded and concatenated."""
    txs = bytearray()
    for h in range(1, await chain.height() + 1):
        block = await chain.rpc("block", height=str(h))
        for tx in block["block"]["data"]["txs"] or []:
            txs += base64.b64decode(tx)
    return bytes(txs)
