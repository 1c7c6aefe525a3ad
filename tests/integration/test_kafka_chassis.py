"""The chassis' Kafka helpers against a real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from kafkakit import ODD_HEADERS, consume_until, create_topic, dead_letter_count, poison, send_raw, send_unreadable
from prometheus_client import REGISTRY

from rdx import deadletters
from services.common import tracing
from services.common.deadletter import Reason
from services.common.events import MAX_EVENT_BYTES, Event
from services.common.kafka import EventProducer, IdempotentConsumer

ROOT = Path(__file__).resolve().parents[2]


def _events(n: int, topic_tag: str) -> list[Event]:
    return [Event(id=f"{topic_tag}/{i}", type="Thing", entity=f"thing:{i % 3}", source="test", data={"i": i})
            for i in range(n)]


async def test_event_reaches_consumer_through_broker_with_trace_id(kafka, tmp_path):
    topic = f"t.{uuid.uuid4().hex[:8]}"
    producer = EventProducer(kafka.bootstrap, "test")
    await producer.start()
    trace = tracing.new_trace_id()
    token = tracing.set_current(trace)
    try:
        await producer.publish(topic, Event(id="e-1", type="Hello", entity="x:1", source="test", data={"n": 7}))
    finally:
        tracing.reset(token)
        await producer.stop()

    seen = []

    def handler(event, conn):
        seen.append((event, tracing.current()))
        conn.execute("CREATE TABLE IF NOT EXISTS got (id TEXT)")
        conn.execute("INSERT INTO got VALUES (?)", (event.id,))

    consumer = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", tmp_path / "c.sqlite", handler)
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS got (id TEXT)")
    await consumer.start()
    try:
        assert await consume_until(consumer, "SELECT count(*) FROM got", 1) == 1
    finally:
        await consumer.stop()
    event, trace_in_handler = seen[0]
    assert event.type == "Hello" and event.data == {"n": 7}
    assert trace_in_handler == trace  # the trace id crossed the broker in the traceparent header


async def test_each_event_id_is_applied_once_across_redelivery_and_restart(kafka, tmp_path):
    topic = f"t.{uuid.uuid4().hex[:8]}"
    producer = EventProducer(kafka.bootstrap, "test")
    await producer.start()
    events = _events(30, topic)
    await producer.publish_many(topic, events)
    await producer.publish_many(topic, events[:10])  # a producer that retried after a crash
    await producer.stop()

    def handler(event, conn):
        conn.execute("INSERT INTO applied VALUES (?)", (event.id,))

    db = tmp_path / "read-model.sqlite"
    for group in ("g1", "g2"):  # g2 has no committed offsets: the whole topic is delivered again
        consumer = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"{group}-{topic}", db, handler)
        consumer.conn.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT)")
        await consumer.start()
        try:
            await consume_until(consumer, "SELECT count(*) FROM applied", 30, timeout=15)
            rows = consumer.conn.execute("SELECT id, count(*) FROM applied GROUP BY id").fetchall()
        finally:
            await consumer.stop()
        assert len(rows) == 30
        assert all(n == 1 for _, n in rows)


async def test_undecodable_message_becomes_a_dead_letter_and_consumption_goes_on(kafka, tmp_path):
    from aiokafka import AIOKafkaProducer

    topic = f"t.{uuid.uuid4().hex[:8]}"
    raw = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
    await raw.start()
    await raw.send_and_wait(topic, b"not json at all")
    await raw.send_and_wait(topic, Event(id="ok-1", type="T", entity="e", source="test").encode())
    await raw.stop()

    def handler(event, conn):
        conn.execute("INSERT INTO applied VALUES (?)", (event.id,))

    consumer = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", tmp_path / "c.sqlite", handler)
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT)")
    await consumer.start()
    try:
        assert await consume_until(consumer, "SELECT count(*) FROM applied", 1) == 1
        letters = consumer.conn.execute('SELECT "offset", error, value FROM dead_letters').fetchall()
    finally:
        await consumer.stop()
    assert letters == [(0, "not an rdx event: JSONDecodeError", b"not json at all")]


# --------------------------------------------------------------------------------------------
# Poison (issue 15): no record stops a consumer; each becomes a dead letter with its reason


def _recorder(conn_table: str = "applied"):
    def handler(event, conn):
        conn.execute(f"INSERT INTO {conn_table} VALUES (?)", (event.id,))
    return handler


async def _run_for(consumer: IdempotentConsumer, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


async def test_no_poison_stops_the_consumer_each_is_dead_lettered_with_its_reason_and_a_restart_is_clean(
        kafka, tmp_path):
    topic = f"t.{uuid.uuid4().hex[:8]}"
    await create_topic(kafka.bootstrap, topic, 4 << 20)  # so that an oversize record reaches the consumer

    def good(i: int) -> bytes:
        return Event(id=f"good-{i}", type="Thing", entity=f"thing:{i}", source="test").encode()

    expected: dict[int, Reason] = {}
    for i, (_, reason, value, key) in enumerate(poison(MAX_EVENT_BYTES)):
        expected[await send_raw(kafka.bootstrap, topic, value, key=key)] = reason
        await send_raw(kafka.bootstrap, topic, good(i))
    expected[await send_unreadable(kafka.bootstrap, topic, good(100))] = Reason.UNREADABLE
    await send_raw(kafka.bootstrap, topic, good(101), headers=ODD_HEADERS)  # odd headers, a good event
    wanted = {f"good-{i}" for i in range(len(expected) - 1)} | {"good-101"}
    before = {r: dead_letter_count("test", topic, r) for r in Reason}

    db = tmp_path / "c.sqlite"
    consumer = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", db, _recorder(),
                                  event_types={topic: {"Thing"}})
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT)")
    await consumer.start()
    try:
        assert await consume_until(consumer, "SELECT count(*) FROM applied", len(wanted)) == len(wanted)
        applied = {r[0] for r in consumer.conn.execute("SELECT id FROM applied")}
        kept = dict(consumer.conn.execute('SELECT "offset", reason FROM dead_letters WHERE forwarded = 1'))
        assert consumer.conn.execute("SELECT count(*) FROM dead_letters WHERE forwarded = 0").fetchone()[0] == 0
    finally:
        await consumer.stop()
    assert applied == wanted  # every good event, the one after each poison included
    assert kept == expected
    on_topic = {d.offset: d for _, d in await deadletters.read(kafka.bootstrap, [topic])}
    assert {o: d.reason for o, d in on_topic.items()} == expected
    assert all(d.service == "test" and d.group == f"g-{topic}" and d.topic == topic for d in on_topic.values())
    by_name = dict(zip([name for name, *_ in poison(MAX_EVENT_BYTES)], sorted(on_topic)))
    assert on_topic[by_name["not-json"]].value == b"<xml>not json</xml>"  # the original bytes, for forensics
    assert on_topic[by_name["tombstone"]].value is None and on_topic[by_name["tombstone"]].key == b"asset:x"
    assert on_topic[by_name["oversize"]].value is None and on_topic[by_name["oversize"]].size > MAX_EVENT_BYTES
    counted = {r: dead_letter_count("test", topic, r) - before[r] for r in Reason}
    assert counted == {r: float(list(expected.values()).count(r)) for r in Reason}

    # a restart resumes after the poison: nothing is read again, and the next event applies
    await send_raw(kafka.bootstrap, topic, good(200))
    again = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", db, _recorder(),
                               event_types={topic: {"Thing"}})
    await again.start()
    try:
        assert await consume_until(again, "SELECT count(*) FROM applied", len(wanted) + 1) == len(wanted) + 1
        assert again.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == len(expected)
    finally:
        await again.stop()
    assert {r: dead_letter_count("test", topic, r) - before[r] for r in Reason} == counted
    assert len(await deadletters.read(kafka.bootstrap, [topic])) == len(expected)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rdx", "dead-letters", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


async def test_a_failing_handler_is_retried_then_dead_lettered_and_a_replay_applies_it_once(kafka, tmp_path):
    topic = f"t.{uuid.uuid4().hex[:8]}"
    failures = {"flaky": 2, "broken": 10**6}  # raises this many more times for that event id
    runs: dict[str, int] = {}

    def handler(event, conn):
        runs[event.id] = runs.get(event.id, 0) + 1
        conn.execute("INSERT INTO applied VALUES (?)", (event.id,))  # rolled back when it raises below
        if failures.get(event.id, 0) > 0:
            failures[event.id] -= 1
            raise KeyError("member")

    producer = EventProducer(kafka.bootstrap, "test")
    await producer.start()
    await producer.publish_many(topic, [Event(id=i, type="Thing", entity="thing:1", source="test")
                                        for i in ("flaky", "broken", "after")])
    await producer.stop()
    retries = REGISTRY.get_sample_value("rdx_kafka_handler_retries_total", {"service": "test", "topic": topic}) or 0
    consumer = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", tmp_path / "c.sqlite", handler,
                                  max_attempts=4, retry_backoff_s=0.05)
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT)")
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async def applied() -> list[str]:
            return [r[0] for r in consumer.conn.execute("SELECT id FROM applied ORDER BY rowid")]

        await _until(lambda: asyncio.sleep(0, len(consumer.conn.execute("SELECT 1 FROM applied").fetchall()) == 2))
        assert await applied() == ["flaky", "after"]  # flaky on its third run; broken given up after four
        assert runs == {"flaky": 3, "broken": 4, "after": 1}
        assert (REGISTRY.get_sample_value("rdx_kafka_handler_retries_total", {"service": "test", "topic": topic})
                - retries) == 2 + 3
        assert dead_letter_count("test", topic, Reason.HANDLER_FAILED) == 1
        forwarded = "SELECT count(*) FROM dead_letters WHERE forwarded = 1"
        await _until(lambda: asyncio.sleep(0, consumer.conn.execute(forwarded).fetchone()[0] == 1))

        listed = _cli("list", "--bootstrap", kafka.bootstrap, "--topic", topic)
        assert listed.returncode == 0, listed.stderr
        row = next(line for line in listed.stdout.splitlines() if line.startswith(f"{topic}:0:1 "))
        assert row.split()[1:4] == ["test", "handler_failed", "4"] and "KeyError" in row
        assert "1 dead letters" in listed.stdout

        failures["broken"] = 0  # the handler is fixed; the dead letter is replayed, twice
        for _ in range(2):
            replayed = _cli("replay", f"{topic}:0:1", "--bootstrap", kafka.bootstrap, "--topic", topic)
            assert replayed.returncode == 0 and "1 replayed, 0 skipped" in replayed.stdout, replayed.stdout
        await _until(lambda: asyncio.sleep(0, runs["broken"] == 5))
        await asyncio.sleep(1.0)  # time for the second replay to arrive too
        assert await applied() == ["flaky", "after", "broken"]  # applied once, on the first replay
        assert runs["broken"] == 5
        missing = _cli("replay", f"{topic}:0:9", "--bootstrap", kafka.bootstrap, "--topic", topic)
        assert missing.returncode == 1 and "no dead letter" in missing.stderr
    finally:
        stop.set()
        await task
        await consumer.stop()


async def _until(check, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def test_a_partition_moved_to_a_second_consumer_of_the_group_mid_batch_stops_neither(kafka, tmp_path):
    """Replicas share a group (the gateways' webhook consumers): when one joins, the partition moves
    away from the other while it is applying a batch. Committing a partition it no longer holds
    raised IllegalStateError out of run(), which stopped a whole gateway (a fresh-clone run lost
    every replica test to it). Both must keep running, and every event must be applied."""
    topic = f"t.{uuid.uuid4().hex[:8]}"
    await create_topic(kafka.bootstrap, topic, 1 << 20)
    producer = EventProducer(kafka.bootstrap, "test")
    await producer.start()
    try:
        await producer.publish_many(topic, _events(300, topic))
    finally:
        await producer.stop()

    async def slow(event, conn):  # an awaiting handler (the gateway's asks the chain), so a rebalance runs mid-batch
        await asyncio.sleep(0.01)
        conn.execute("CREATE TABLE IF NOT EXISTS got (id TEXT)")
        conn.execute("INSERT INTO got VALUES (?)", (event.id,))

    group = f"g-{topic}"
    first = IdempotentConsumer(kafka.bootstrap, "test", [topic], group, tmp_path / "a.sqlite", slow)
    second = IdempotentConsumer(kafka.bootstrap, "test", [topic], group, tmp_path / "b.sqlite", slow)
    for c in (first, second):
        c.conn.execute("CREATE TABLE IF NOT EXISTS got (id TEXT)")
    stop = asyncio.Event()

    def applied() -> set[str]:
        return {row[0] for c in (first, second) for row in c.conn.execute("SELECT id FROM got")}

    await first.start()
    tasks = [asyncio.create_task(first.run(stop))]
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(applied()) < 20 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await second.start()  # joins the group while the first is inside its batch of up to 500
        tasks.append(asyncio.create_task(second.run(stop)))
        deadline = loop.time() + 90
        while len(applied()) < 300 and loop.time() < deadline and not any(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        crashed = [t.exception() for t in tasks if t.done()]
        assert not crashed, crashed
        assert len(applied()) == 300
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await first.stop()
        await second.stop()
