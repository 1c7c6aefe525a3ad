"""IdempotentConsumer with ``batch_transactions`` against a real broker: a poll batch's records in
one SQLite transaction, each in a savepoint of its own, its Kafka offset committed only after that
transaction is. A bad record is still dead-lettered alone; the records around it are applied once
each. Every record is sent before the consumer starts, so one poll reads them all."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest
from aiokafka import TopicPartition
from kafkakit import send_raw, thing

from services.common.kafka import IdempotentConsumer


async def started(kafka, tmp_path, handler, values: list[bytes]) -> tuple[IdempotentConsumer, str, list]:
    """A batching consumer of a fresh topic holding ``values``; each offset commit records what
    another connection sees in the database at that moment (what is durable, not what the open
    transaction holds)."""
    topic = f"t.{uuid.uuid4().hex[:8]}"
    for value in values:
        await send_raw(kafka.bootstrap, topic, value)
    db = tmp_path / "model.sqlite"
    c = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", db, handler,
                           event_types={topic: {"Thing"}}, retry_backoff_s=0, batch_transactions=True)
    c.conn.execute("CREATE TABLE things (id TEXT PRIMARY KEY)")
    await c.start()
    commits, commit = [], c._consumer.commit

    async def observed(offsets=None):
        with sqlite3.connect(db) as other:
            commits.append(([r[0] for r in other.execute("SELECT event_id FROM applied_events ORDER BY 1")],
                            [r[0] for r in other.execute("SELECT id FROM things ORDER BY 1")],
                            [r[0] for r in other.execute('SELECT "offset" FROM dead_letters ORDER BY 1')]))
        return await commit(offsets)

    c._consumer.commit = observed
    return c, topic, commits


async def run_until_committed(c: IdempotentConsumer, topic: str, end: int, timeout: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while (await c._consumer.committed(TopicPartition(topic, 0)) or 0) < end:
            assert not task.done() and asyncio.get_running_loop().time() < deadline, "offset not committed"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def test_a_bad_record_is_dead_lettered_alone_and_the_others_are_applied_once_before_the_commit(kafka, tmp_path):
    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (event.id,))
        if event.id == "bad":
            raise RuntimeError("this one never applies")

    values = [thing("a"), thing("bad"), thing("b"), thing("a"), b"{not json", thing("c")]
    c, topic, commits = await started(kafka, tmp_path, handler, values)
    try:
        await run_until_committed(c, topic, 6)
        # durable when the offset was committed: every good record once, the duplicate id not again,
        # the failing record's own write rolled back to its savepoint, both bad records kept as dead letters
        assert commits[-1] == (["a", "b", "c"], ["a", "b", "c"], [1, 4])
        assert c.store.count_unforwarded() == 0 and not c.conn.in_transaction
    finally:
        await c.stop()


async def test_a_record_that_fails_once_is_applied_once_without_its_failed_attempts_writes(kafka, tmp_path):
    attempts = []

    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (f"{event.id}-{len(attempts)}",))
        if event.id == "flaky" and not attempts:
            attempts.append(1)
            raise RuntimeError("once")

    c, topic, commits = await started(kafka, tmp_path, handler, [thing("a"), thing("flaky"), thing("b")])
    try:
        await run_until_committed(c, topic, 3)
        # the failed attempt's "flaky-0" went with its savepoint
        assert commits[-1] == (["a", "b", "flaky"], ["a-0", "b-1", "flaky-1"], [])
    finally:
        await c.stop()


async def test_a_batch_that_stops_midway_keeps_nothing_and_commits_no_offset(kafka, tmp_path):
    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (event.id,))
        if event.id == "b":
            raise asyncio.CancelledError  # the process being stopped inside the batch

    c, topic, commits = await started(kafka, tmp_path, handler, [thing("a"), thing("b"), thing("c")])
    try:
        with pytest.raises(asyncio.CancelledError):
            await c.run(asyncio.Event())
        assert commits == [] and await c._consumer.committed(TopicPartition(topic, 0)) is None
        assert not c.conn.in_transaction
        assert c.conn.execute("SELECT count(*) FROM applied_events").fetchone()[0] == 0
        assert c.conn.execute("SELECT count(*) FROM things").fetchone()[0] == 0
    finally:
        await c.stop()


async def test_a_batch_whose_transaction_sqlite_rolled_back_is_applied_again_record_by_record(kafka, tmp_path):
    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (event.id,))
        if event.id == "b" and conn.in_transaction and not getattr(handler, "lost", False):
            handler.lost = True
            conn.execute("ROLLBACK")  # what SQLite does on a full disk or an I/O error
            raise sqlite3.OperationalError("database or disk is full")

    c, topic, commits = await started(kafka, tmp_path, handler, [thing("a"), thing("b"), thing("c")])
    try:
        await run_until_committed(c, topic, 3)
        assert commits[-1] == (["a", "b", "c"], ["a", "b", "c"], [])
    finally:
        await c.stop()
