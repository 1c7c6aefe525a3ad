"""A read model restored from a backup reads on from where the backup was, on a real broker.

The copy has the same model id, so the same Kafka group, as the instance that ran on after the
backup and committed the group's offsets past what the copy holds. Resuming from those offsets
would lose every event in between for good (tests/deploy's billing restore saw exactly that);
the consumer resumes from the position its own database records."""

from __future__ import annotations

import asyncio
import shutil
import uuid

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import TopicAlreadyExistsError
from kafkakit import consume_until, create_topic, send_raw, thing

from services.common.kafka import IdempotentConsumer

COUNT = "SELECT count(*) FROM things"


def handler(event, conn):
    conn.execute("INSERT INTO things VALUES (?)", (event.id,))  # a second apply would raise: PRIMARY KEY


def read_model(kafka, topic: str, db) -> IdempotentConsumer:
    c = IdempotentConsumer(kafka.bootstrap, "test", [topic], None, db, handler, event_types={topic: {"Thing"}})
    c.conn.execute("CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY)")
    return c


async def run(c: IdempotentConsumer, want: int, dead: int = 0) -> list[str]:
    """The ids applied, once ``want`` are (a second apply of one would be a dead letter: only the
    ``dead`` expected may be there)."""
    await c.start()
    try:
        await consume_until(c, COUNT, want, timeout=30)
        assert c.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == dead
        return [r[0] for r in c.conn.execute("SELECT id FROM things ORDER BY 1")]
    finally:
        await c.stop()


async def test_a_restored_read_model_applies_what_came_after_its_backup_once(kafka, tmp_path):
    topic = f"t.{uuid.uuid4().hex[:8]}"
    for i in ("a", "b"):
        await send_raw(kafka.bootstrap, topic, thing(i))
    live, copy = tmp_path / "live", tmp_path / "backup"
    live.mkdir()
    assert await run(read_model(kafka, topic, live / "model.sqlite"), 2) == ["a", "b"]
    shutil.copytree(live, copy)  # the backup, taken while it is stopped

    # It runs on after the backup: c is applied and the group's offset committed past it.
    await send_raw(kafka.bootstrap, topic, thing("c"))
    first = read_model(kafka, topic, live / "model.sqlite")
    assert await run(first, 3) == ["a", "b", "c"]
    restored = read_model(kafka, topic, copy / "model.sqlite")
    assert restored.group_id == first.group_id
    await restored.start()
    try:
        assert await restored._consumer.committed(TopicPartition(topic, 0)) == 3
    finally:
        await restored.stop()

    # The live copy is lost; the restored one applies c, and nothing twice.
    restored = read_model(kafka, topic, copy / "model.sqlite")
    assert await run(restored, 3) == ["a", "b", "c"]


async def test_a_read_model_whose_topic_was_made_again_reads_it_from_the_start(kafka, tmp_path):
    """Restore everything (docs/operations.md): the broker starts empty and the relay publishes the
    chain's events again, at other offsets (the old topic also held records the new one does not:
    here one forged record before them). The database's position names a record of the old topic;
    Kafka holds no offset for the group any more, so the read model reads the new one from the start,
    and applies what it had not (x, d) once, and what it had not again."""
    topic = f"t.{uuid.uuid4().hex[:8]}"
    await send_raw(kafka.bootstrap, topic, b"forged")
    for i in ("a", "b", "c"):
        await send_raw(kafka.bootstrap, topic, thing(i))
    live = tmp_path / "live"
    live.mkdir()
    assert await run(read_model(kafka, topic, live / "model.sqlite"), 3, dead=1) == ["a", "b", "c"]

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    for _ in range(100):  # the deletion completes in the background
        try:
            await create_topic(kafka.bootstrap, topic, 1 << 20)
            break
        except TopicAlreadyExistsError:
            await asyncio.sleep(0.1)
    for i in ("x", "a", "b", "c", "d"):
        await send_raw(kafka.bootstrap, topic, thing(i))
    assert await run(read_model(kafka, topic, live / "model.sqlite"), 5, dead=1) == ["a", "b", "c", "d", "x"]
