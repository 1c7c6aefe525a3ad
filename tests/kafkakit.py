"""Consuming a topic in a test, through the chassis' idempotent consumer, until enough is applied; and
poison records, sent as any client could send them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from prometheus_client import REGISTRY

from services.common.deadletter import Reason
from services.common.events import MAX_DEPTH, Event
from services.common.kafka import IdempotentConsumer


def thing(event_id: str) -> bytes:
    """A minimal valid event of type ``Thing`` (a test topic's ``event_types``)."""
    return Event(id=event_id, type="Thing", entity=f"thing:{event_id}", source="test", data={}).encode()


async def consume_until(consumer: IdempotentConsumer, count_sql: str, want: int, timeout: float = 30.0,
                        settle: float = 0.5) -> int:
    """Run ``consumer`` until ``count_sql`` counts ``want`` (or ``timeout``), then ``settle`` seconds
    more so that any duplicate that would follow arrives too; returns the final count."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if consumer.conn.execute(count_sql).fetchone()[0] >= want:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)
        return consumer.conn.execute(count_sql).fetchone()[0]
    finally:
        stop.set()
        await task


async def applied_counts(bootstrap: str, topics: list[str], group: str, db: Path, want: int,
                         timeout: float = 30.0) -> dict[str, int]:
    """How many times each event id was applied by a fresh idempotent consumer (1 each, if all is well)."""

    def handler(event, conn):
        conn.execute("INSERT INTO applied VALUES (?)", (event.id,))

    consumer = IdempotentConsumer(bootstrap, "test", topics, group, db, handler)
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT)")
    await consumer.start()
    try:
        await consume_until(consumer, "SELECT count(*) FROM applied", want, timeout, settle=1.0)
        return dict(consumer.conn.execute("SELECT id, count(*) FROM applied GROUP BY id").fetchall())
    finally:
        await consumer.stop()


# --------------------------------------------------------------------------------------------
# Poison: records no consumer may stop on, sent with a raw producer as any client could


class _NotUtf8Key(str):
    """A header key whose bytes on the wire are not UTF-8 (aiokafka's own encoder only writes UTF-8)."""

    def encode(self, *args, **kwargs) -> bytes:
        return b"\xff\xfe"


def poison(max_event_bytes: int) -> list[tuple[str, Reason, bytes | None, bytes | None]]:
    """(name, the reason it must be dead-lettered with, value, key) for every kind of poison."""
    envelope = {"id": "p/0/0", "type": "AssetListed", "entity": "asset:x", "source": "consensus", "data": {}}
    deep: dict = {}
    for _ in range(MAX_DEPTH):
        deep = {"x": deep}
    return [
        ("tombstone", Reason.TOMBSTONE, None, b"asset:x"),
        ("keyless-tombstone", Reason.TOMBSTONE, None, None),
        ("not-utf8", Reason.NOT_UTF8, b"\xff\xfe\x00{", None),
        ("not-json", Reason.NOT_JSON, b"<xml>not json</xml>", None),
        ("json-not-envelope", Reason.NOT_ENVELOPE, b'{"hello": ["world"]}', None),
        ("json-array", Reason.NOT_ENVELOPE, b"[1, 2, 3]", None),
        ("deeper-than-the-parser", Reason.TOO_DEEP, b"[" * 50_000 + b"]" * 50_000, None),
        ("deeper-than-allowed", Reason.TOO_DEEP, json.dumps({**envelope, "data": deep}).encode(), None),
        ("oversize", Reason.OVERSIZE, json.dumps({**envelope, "data": {"pad": "x" * max_event_bytes}}).encode(), None),
        ("unknown-version", Reason.UNKNOWN_VERSION, json.dumps({**envelope, "version": 2}).encode(), None),
        ("unknown-type", Reason.UNKNOWN_TYPE, json.dumps({**envelope, "type": "NoSuchEvent"}).encode(), None),
    ]


ODD_HEADERS = [("traceparent", b"\xff\xfe not ascii"), ("traceparent", None), ("rdx-event-id", b"another/id"),
               ("rdx-dlq-reason", b"forged"), ("", b""), ("x-big", b"h" * 50_000)]


async def create_topic(bootstrap: str, topic: str, max_message_bytes: int) -> None:
    """A topic that takes records up to ``max_message_bytes`` (the broker default is ~1 MiB)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": str(max_message_bytes)})])
    finally:
        await admin.close()


async def send_raw(bootstrap: str, topic: str, value: bytes | None, *, key: bytes | None = None,
                   headers=()) -> int:
    """Send one record as is; its offset. (A record needs a key or a value, so a keyless tombstone
    is built as a batch by hand.)"""
    if key is None and value is None:
        return await _send_built(bootstrap, topic, value, [])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20)
    await producer.start()
    try:
        return (await producer.send_and_wait(topic, value, key=key, headers=list(headers))).offset
    finally:
        await producer.stop()


async def send_unreadable(bootstrap: str, topic: str, value: bytes) -> int:
    """A record with a header key that is not UTF-8: aiokafka fails the whole fetch on it. Its offset."""
    return await _send_built(bootstrap, topic, value, [(_NotUtf8Key("x"), b"1")])


async def _send_built(bootstrap: str, topic: str, value: bytes | None, headers) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        # aiokafka's pure-Python batch writer, so that the header key above writes its own bytes
        batch._builder = _DefaultRecordBatchBuilderPy(2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1,
                                                      base_sequence=-1, batch_size=1 << 20)
        batch.append(timestamp=None, key=None, value=value, headers=headers)
        metadata = await (await producer.send_batch(batch, topic, partition=0))
        return metadata.offset
    finally:
        await producer.stop()


def dead_letter_count(service: str, topic: str, reason: str) -> float:
    """This process's rdx_kafka_dead_letters_total for one label set (0 when never counted)."""
    return REGISTRY.get_sample_value("rdx_kafka_dead_letters_total",
                                     {"service": service, "topic": topic, "reason": reason}) or 0.0
