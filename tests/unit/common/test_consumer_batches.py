"""IdempotentConsumer with ``batch_transactions``: a poll batch's records in one SQLite transaction,
each in a savepoint of its own, its Kafka offset committed only after that transaction is. A bad
record is still dead-lettered alone; the records around it are applied once each."""

from __future__ import annotations

import asyncio
import sqlite3
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from services.common.events import Event
from services.common.kafka import IdempotentConsumer

TOPIC = "rdx.test.v1"
TP = TopicPartition(TOPIC, 0)


def record(offset: int, event_id: str, kind: str = "Thing", *, value: bytes | None = None):
    if value is None:
        value = Event(id=event_id, type=kind, entity=f"thing:{event_id}", source="test", data={"n": offset}).encode()
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=b"k", value=value,
                           headers=[("rdx-event-id", event_id.encode())])


class FakeKafka:
    """One poll batch, then nothing; a commit records what another connection sees in the database
    at that moment (what is durable, not what the consumer's open transaction holds)."""

    def __init__(self, db, batch):
        self.db, self.batches, self.commits = db, [{TP: batch}], []

    async def getmany(self, timeout_ms, max_records):
        await asyncio.sleep(0.001)
        return self.batches.pop(0) if self.batches else {}

    def assignment(self):
        return {TP}

    async def commit(self, offsets):
        with sqlite3.connect(self.db) as other:
            applied = sorted(r[0] for r in other.execute("SELECT event_id FROM applied_events"))
            things = sorted(r[0] for r in other.execute("SELECT id FROM things"))
            letters = sorted(r[0] for r in other.execute('SELECT "offset" FROM dead_letters'))
        self.commits.append((offsets, applied, things, letters))

    def highwater(self, tp):
        return None


class FakeDLQ:
    def __init__(self):
        self.sent = []

    async def send_and_wait(self, topic, value, key=None, headers=None):
        self.sent.append((topic, value))


def consumer(tmp_path, handler, batch, **kwargs):
    db = tmp_path / "model.sqlite"
    c = IdempotentConsumer("127.0.0.1:1", "test", [TOPIC], "g", db, handler, event_types={TOPIC: {"Thing"}},
                           retry_backoff_s=0, batch_transactions=True, **kwargs)
    c.conn.execute("CREATE TABLE things (id TEXT PRIMARY KEY)")
    c._consumer, c._dlq = FakeKafka(db, batch), FakeDLQ()
    return c


async def run_one_poll(c):
    stop = asyncio.Event()
    task = asyncio.create_task(c.run(stop))
    while c._consumer.batches or not c._consumer.commits:
        await asyncio.sleep(0.01)
        if task.done():
            break
    stop.set()
    await task


def test_a_bad_record_is_dead_lettered_alone_and_the_others_are_applied_once_before_the_commit(tmp_path):
    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (event.id,))
        if event.id == "bad":
            raise RuntimeError("this one never applies")

    batch = [record(10, "a"), record(11, "bad"), record(12, "b"), record(13, "a"), record(14, "x", value=b"{not json"),
             record(15, "c")]
    c = consumer(tmp_path, handler, batch)
    asyncio.run(run_one_poll(c))
    [(offsets, applied, things, letters)] = c._consumer.commits
    assert offsets == {TP: 16}
    # durable when the offset was committed: every good record once, the duplicate id not again,
    # the failing record's own write rolled back to its savepoint, both bad records kept as dead letters
    assert applied == ["a", "b", "c"] and things == ["a", "b", "c"] and letters == [11, 14]
    assert [topic for topic, _ in c._dlq.sent] == [f"{TOPIC}.dlq"] * 2
    assert c.store.count_unforwarded() == 0 and not c.conn.in_transaction


def test_a_record_that_fails_once_is_applied_once_without_its_failed_attempts_writes(tmp_path):
    attempts = []

    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (f"{event.id}-{len(attempts)}",))
        if event.id == "flaky" and not attempts:
            attempts.append(1)
            raise RuntimeError("once")

    c = consumer(tmp_path, handler, [record(0, "a"), record(1, "flaky"), record(2, "b")])
    asyncio.run(run_one_poll(c))
    [(offsets, applied, things, letters)] = c._consumer.commits
    assert offsets == {TP: 3} and applied == ["a", "b", "flaky"] and letters == []
    assert things == ["a-0", "b-1", "flaky-1"]  # the failed attempt's "flaky-0" went with its savepoint


def test_a_batch_that_stops_midway_keeps_nothing_and_commits_no_offset(tmp_path):
    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (event.id,))
        if event.id == "b":
            raise asyncio.CancelledError  # the process being stopped inside the batch

    c = consumer(tmp_path, handler, [record(0, "a"), record(1, "b"), record(2, "c")])
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(c.run(asyncio.Event()))
    assert c._consumer.commits == [] and not c.conn.in_transaction
    assert c.conn.execute("SELECT count(*) FROM applied_events").fetchone()[0] == 0
    assert c.conn.execute("SELECT count(*) FROM things").fetchone()[0] == 0


def test_a_batch_whose_transaction_sqlite_rolled_back_is_applied_again_record_by_record(tmp_path):
    def handler(event, conn):
        conn.execute("INSERT INTO things VALUES (?)", (event.id,))
        if event.id == "b" and conn.in_transaction and not getattr(handler, "lost", False):
            handler.lost = True
            conn.execute("ROLLBACK")  # what SQLite does on a full disk or an I/O error
            raise sqlite3.OperationalError("database or disk is full")

    c = consumer(tmp_path, handler, [record(0, "a"), record(1, "b"), record(2, "c")])
    asyncio.run(run_one_poll(c))
    [(offsets, applied, things, letters)] = c._consumer.commits
    assert offsets == {TP: 3} and applied == ["a", "b", "c"] and things == ["a", "b", "c"] and letters == []


def test_without_batch_transactions_each_record_commits_alone(tmp_path):
    db = tmp_path / "model.sqlite"
    c = IdempotentConsumer("127.0.0.1:1", "test", [TOPIC], "g", db, lambda e, conn: None, event_types={TOPIC: {"Thing"}})
    assert c.batch_transactions is False
