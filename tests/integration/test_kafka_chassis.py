"""The chassis' Kafka helpers against a real broker."""

from __future__ import annotations

import uuid

from kafkakit import consume_until

from services.common import tracing
from services.common.events import Event
from services.common.kafka import EventProducer, IdempotentConsumer


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
