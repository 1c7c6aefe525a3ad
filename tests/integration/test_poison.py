"""Issue 15 on the real services: every kind of poison record, sent with a raw producer to the
chain topic that the catalog, billing and compute consumers read. After each one, every service
is ready, has applied the chain's next event, has dead-lettered the record with its reason on
``rdx.chain.events.v1.dlq`` and counted it in ``rdx_kafka_dead_letters_total``; at the end each
service is stopped and started again and comes back ready without reading a record twice.

The bar: each service healthy within 10 s of the poison, and a down/up cycle healthy. The module
runs its own broker and chain (started as tests/conftest.py starts the shared ones), so that the
poison stays out of the topic every other test reads.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import start_chain
from kafkakit import ODD_HEADERS, create_topic, poison, send_raw, send_unreadable

from rdx import deadletters
from rdx.components import KafkaBroker, ServiceProcess, compute_node, free_port
from services.common.chain import ChainClient
from services.common.deadletter import Reason
from services.common.events import CHAIN_EVENTS, MAX_EVENT_BYTES, TOPICS, Event
from services.common.identity import Identity

pytestmark = pytest.mark.timeout(600)

MEMBER = "poison-bank"
HEALTHY_BAR_S = 10.0
DATABASES = {"catalog": "catalog/catalog.sqlite", "billing": "billing/ledger.sqlite",
             "compute": f"compute-{MEMBER}/node.sqlite"}


@dataclass
class World:
    bootstrap: str
    rpc_url: str
    chain_id: str
    association: Identity
    state: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    deposits: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    async def deposit(self) -> int:
        """A real chain event after the poison: a deposit, committed; the relay publishes it."""
        self.deposits += 1
        async with ChainClient(self.rpc_url, self.chain_id) as client:
            committed = await client.submit(self.association, "bank.Deposit",
                                            {"to": MEMBER, "amount": 1, "reference": f"after-{self.deposits}"})
        return committed.height


@pytest.fixture(scope="module")
def world(toolchain, tmp_path_factory):
    root = tmp_path_factory.mktemp("poison")
    broker = KafkaBroker(root / "kafka", toolchain, port=free_port(), controller_port=free_port())
    broker.prepare()
    broker.start()
    try:
        asyncio.run(create_topic(broker.bootstrap, CHAIN_EVENTS, 4 << 20))  # so oversize records get through
        broker.create_topics(TOPICS)
        chain = start_chain(toolchain, broker, root / "chain", Identity.generate("association"))
        try:
            w = World(broker.bootstrap, chain.rpc_url, chain.chain_id, chain.association, root / "state")
            asyncio.run(_register(w, root))
            yield w
        finally:
            for proc in w.services.values():
                proc.stop()
            chain.node.stop()
            chain.consensus.stop()
    finally:
        broker.stop()


async def _register(w: World, root: Path) -> None:
    member, node = Identity.generate(MEMBER), Identity.generate(f"{MEMBER}.node")
    node.save(root / "keys" / "node.json")
    async with ChainClient(w.rpc_url, w.chain_id) as client:
        await client.submit(w.association, "members.Register", {
            "id": MEMBER, "name": "Poison Bank", "roles": ["consumer"], "public_key": member.public_key,
            "node": {"public_key": node.public_key, "endpoint": f"127.0.0.1:{free_port()}"}})
    env = {"RDX_KAFKA_BOOTSTRAP": w.bootstrap, "RDX_COMETBFT_RPC": w.rpc_url, "RDX_CHAIN_ID": w.chain_id,
           "RDX_STATE_ROOT": str(w.state)}
    for name in ("catalog", "billing"):
        w.services[name] = ServiceProcess(name, free_port(), env, root / "logs")
    (root / "datasets").mkdir()
    w.services["compute"] = compute_node(MEMBER, kafka=w.bootstrap, rpc_url=w.rpc_url, chain_id=w.chain_id,
                                         state_root=w.state, key_file=root / "keys" / "node.json",
                                         grpc_port=free_port(), datasets=root / "datasets", log_dir=root / "logs")
    for proc in w.services.values():
        proc.start(wait=False)
    for proc in w.services.values():
        proc.wait_ready(90)


# --------------------------------------------------------------------------------------------
# What a test looks at: only what a service shows (its database, read-only; /readyz; /metrics)


def ready(proc: ServiceProcess) -> bool:
    return proc.process is not None and proc.process.alive() and proc.healthy()


def applied(w: World, service: str, event_id: str) -> bool:
    db = sqlite3.connect(f"file:{w.state / DATABASES[service]}?mode=ro", uri=True)
    try:
        return db.execute("SELECT 1 FROM applied_events WHERE event_id = ?", (event_id,)).fetchone() is not None
    finally:
        db.close()


def dead_letters_counted(proc: ServiceProcess) -> dict[str, float]:
    """{reason: count} of this process's rdx_kafka_dead_letters_total on the chain topic."""
    with urllib.request.urlopen(f"{proc.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = {}
    for labels, value in re.findall(r"^rdx_kafka_dead_letters_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields["topic"] == CHAIN_EVENTS:
            counts[fields["reason"]] = float(value)
    return counts


async def event_after(w: World, offset: int, want) -> Event:
    """The first event on the chain topic after ``offset`` that ``want`` accepts."""
    consumer = AIOKafkaConsumer(bootstrap_servers=w.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(CHAIN_EVENTS, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset + 1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:  # one record at a time, so that the unreadable record of this module can be stepped over
                records = (await consumer.getmany(tp, timeout_ms=1000, max_records=1)).get(tp, [])
            except ValueError:
                consumer.seek(tp, await consumer.position(tp) + 1)
                continue
            for record in records:
                try:
                    event = Event.decode(record.value)
                except ValueError:
                    continue
                if want(event):
                    return event
        raise AssertionError(f"no such event after offset {offset}")
    finally:
        await consumer.stop()


async def letters_at(w: World, offset: int) -> dict[str, str]:
    """{service: reason} of the dead letters of the chain topic's record at ``offset``."""
    return {d.service: d.reason for _, d in await deadletters.read(w.bootstrap, [CHAIN_EVENTS])
            if d.partition == 0 and d.offset == offset}


async def until(check, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# --------------------------------------------------------------------------------------------
# The poison, one kind per test, in order


def _forged_job() -> bytes:
    """A well-formed JobAuthorized naming this member that the chain never emitted (and without the
    fields every handler needs): each service refuses it before any handler runs, since its own
    chain node does not hold it. (A handler that raises on a real event: test_kafka_chassis.py.)"""
    return Event(id="999999/0/0", type="JobAuthorized", entity="job:forged", source="consensus",
                 data={"participants": [MEMBER], "height": 999999}).encode()


KINDS = [(name, reason) for name, reason, _, _ in poison(MAX_EVENT_BYTES)] + [
    ("unreadable-header-key", Reason.UNREADABLE), ("not-the-chains", Reason.NOT_ON_CHAIN), ("odd-headers", None)]


async def send(w: World, kind: str) -> int:
    """Send one poison record of ``kind`` to the chain topic; its offset."""
    known = {name: (value, key) for name, _, value, key in poison(MAX_EVENT_BYTES)}
    if kind in known:
        value, key = known[kind]
        return await send_raw(w.bootstrap, CHAIN_EVENTS, value, key=key)
    real = await event_after(w, -1, lambda e: e.type == "MemberRegistered")  # a real event's bytes, again
    if kind == "unreadable-header-key":
        return await send_unreadable(w.bootstrap, CHAIN_EVENTS, real.encode())
    if kind == "not-the-chains":
        return await send_raw(w.bootstrap, CHAIN_EVENTS, _forged_job())
    return await send_raw(w.bootstrap, CHAIN_EVENTS, real.encode(), headers=ODD_HEADERS)  # a duplicate: dropped


@pytest.mark.parametrize("kind,reason", KINDS, ids=[k for k, _ in KINDS])
async def test_poison_is_dead_lettered_and_every_service_applies_the_next_event(world, kind, reason):
    w = world
    before = {name: dead_letters_counted(proc) for name, proc in w.services.items()}
    sent_at = time.monotonic()
    offset = await send(w, kind)
    height = await w.deposit()
    nxt = await event_after(w, offset, lambda e: e.type == "CreditsDeposited" and e.data["height"] == height)

    async def all_applied() -> bool:
        return all(ready(p) for p in w.services.values()) and all(applied(w, s, nxt.id) for s in w.services)

    await until(all_applied, 30, f"every service ready and applying {nxt.id} after the {kind} record")
    w.timings[kind] = time.monotonic() - sent_at
    assert w.timings[kind] < HEALTHY_BAR_S

    expected = {name: reason for name in w.services} if reason else {}

    async def dead_lettered() -> bool:
        return await letters_at(w, offset) == expected

    if reason:
        await until(dead_lettered, 15, f"the {kind} record on the dead-letter topic")
    else:
        await asyncio.sleep(1.0)  # headers alone never dead-letter a record
    assert await letters_at(w, offset) == expected
    for name, proc in w.services.items():
        counted = dead_letters_counted(proc)
        for r in Reason:
            assert counted.get(r, 0) - before[name].get(r, 0) == (1 if r == reason else 0), (name, r)


async def test_each_service_restarts_clean_after_all_the_poison(world):
    """A down/up cycle: ready again, nothing dead-lettered again (no record read twice), and the next
    chain event applied."""
    w = world
    on_dlq = len(await deadletters.read(w.bootstrap, [CHAIN_EVENTS]))
    assert on_dlq == 3 * sum(1 for _, reason in KINDS if reason)
    for name, proc in w.services.items():
        proc.stop()
        started = time.monotonic()
        proc.start(wait=False)
        proc.wait_ready(60)
        w.timings[f"restart {name}"] = time.monotonic() - started
    height = await w.deposit()
    nxt = await event_after(w, -1, lambda e: e.type == "CreditsDeposited" and e.data["height"] == height)

    async def all_applied() -> bool:
        return all(applied(w, s, nxt.id) for s in w.services)

    await until(all_applied, 30, f"every service applying {nxt.id} after the restart")
    await asyncio.sleep(1.0)
    assert all(ready(p) for p in w.services.values())
    counted = {name: dead_letters_counted(p) for name, p in w.services.items()}
    assert counted == {name: {r.value: 0.0 for r in Reason} for name in w.services}  # this run: nothing
    assert len(await deadletters.read(w.bootstrap, [CHAIN_EVENTS])) == on_dlq
    print("\npoison record -> every service ready with the next chain event applied, and restarts (s):")
    print(json.dumps({k: round(v, 2) for k, v in w.timings.items()}, indent=1))
