"""A read model restored from a backup reads on from where the backup was, on a real broker.

The copy has the same model id, so the same Kafka group, as the instance that ran on after the
backup and committed the group's offsets past what the copy holds. Resuming from those offsets
would lose every event in between for good (tests/deploy's billing restore saw exactly that);
the consumer resumes from the position its own database records."""

from __future__ import annotations

import shutil
import uuid

from aiokafka import TopicPartition
from kafkakit import consume_until, send_raw

from services.common.events import Event
from services.common.kafka import IdempotentConsumer

COUNT = "SELECT count(*) FROM things"


def thing(event_id: str) -> bytes:
    return Event(id=event_id, type="Thing", entity=f"thing:{event_id}", source="test", data={}).encode()


def handler(event, conn):
    conn.execute("INSERT INTO things VALUES (?)", (event.id,))  # a second apply would raise: PRIMARY KEY


def read_model(kafka, topic: str, db) -> IdempotentConsumer:
    c = IdempotentConsumer(kafka.bootstrap, "test", [topic], None, db, handler, event_types={topic: {"Thing"}})
    c.conn.execute("CREATE TABLE IF NOT EXISTS things (id TEXT PRIMARY KEY)")
    return c


async def run(c: IdempotentConsumer, want: int) -> list[str]:
    """The ids applied, once ``want`` are (a second apply of one would be a dead letter: none may be)."""
    await c.start()
    try:
        await consume_until(c, COUNT, want, timeout=30)
        assert c.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
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
