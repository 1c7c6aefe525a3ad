"""Kafka through aiokafka: a producer that waits for the broker's acknowledgement, and a
consumer that applies each event id exactly once, even across restarts and redeliveries, and
that no record can stop.

Exactly-once here is the classic idempotent-consumer pattern: the handler's writes and the
record "this id is applied" commit in the same SQLite transaction, so a crash can never
leave one without the other. Kafka offsets are committed afterwards and only save work.
A read model with a group of its own also keeps its position in its database: a copy restored
from a backup reads on from where the copy was, not from where the instance that ran on after
the backup left the group's offsets. It resumes at the lower of the two, and from the start
when Kafka holds no offset for the group (a new or emptied broker, a topic made again, offsets
expired): a position read in another incarnation of the topic names other records.

A record that is not a valid event of its topic, or whose handler still raises after bounded
retries, becomes a dead letter (services/common/deadletter.py): kept in the consumer's own
database first (so committing past it loses nothing), then forwarded to ``<topic>.dlq``. So does
a chain event that the consumer's own chain node does not hold (services/common/chainevents.py),
when the consumer is given a verifier: only the chain speaks for the chain.

Every client authenticates as ``security`` says (services/common/settings.py: KafkaSecurity), by
default from the RDX_KAFKA_* environment: plaintext on the single machine, SASL_SSL with
SCRAM-SHA-512 and a user per service where rdx is deployed (infra/base/kafka-users.yaml).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, CorruptRecordException, IllegalStateError
from aiokafka.partitioner import DefaultPartitioner

from services.common import metrics, tracing
from services.common.chainevents import ChainEventVerifier, ChainUnavailable, NotOnChain
from services.common.deadletter import DeadLetter, Reason, dead_letter_topic
from services.common.events import CHAIN_EVENTS, EVENT_TYPES, MAX_EVENT_BYTES, Event, EventDecodeError
from services.common.settings import KafkaSecurity

log = logging.getLogger("rdx.kafka")

Handler = Callable[[Event, sqlite3.Connection], None | Awaitable[None]]

# What aiokafka raises when it cannot parse a fetched record (a header key that is not UTF-8, a
# bad batch): the whole fetch fails, not one record, and it fails again on every retry.
UNREADABLE = (ValueError, CorruptRecordException)


def _headers(event: Event, traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """``traceparent``: the event's own trace context (the relay's, per chain event); else the
    current span's or trace id's."""
    return [
        ("rdx-event-id", event.id.encode()),
        ("rdx-event-type", event.type.encode()),
        ("traceparent", (traceparent or tracing.outgoing_traceparent()).encode()),
    ]


class EventProducer:
    """Publishes events and returns only once the broker has them (acks=all, idempotent)."""

    def __init__(self, bootstrap: str, service: str, *, request_timeout_ms: int = 10_000,
                 security: KafkaSecurity | None = None, max_batch_bytes: int | None = None):
        """``security`` None: from the RDX_KAFKA_* environment (plaintext when none is set).
        ``max_batch_bytes``: the largest record batch filled per partition (aiokafka's
        ``max_batch_size``; None, its default of 16 KiB)."""
        self.service = service
        self.security = security or KafkaSecurity()
        self._options = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             request_timeout_ms=request_timeout_ms, linger_ms=2)
        if max_batch_bytes is not None:
            self._options["max_batch_size"] = max_batch_bytes
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self._partitioner = DefaultPartitioner()  # the producer's own default: same key, same partition

    async def start(self) -> None:
        # aiokafka binds to the running loop, so the client is made here and not in __init__.
        self._producer = AIOKafkaProducer(**self._options, **self.security.client_options())
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        """Also safe after a failed start: aiokafka then still holds a client to close."""
        self._started = False
        if self._producer is not None:
            await self._producer.stop()

    @property
    def ready(self) -> bool:
        return self._started

    async def publish(self, topic: str, event: Event) -> None:
        """Raises KafkaError if the broker did not acknowledge; the caller decides to retry."""
        await self._producer.send_and_wait(topic, event.encode(), key=event.entity.encode(), headers=_headers(event))
        metrics.EVENTS_PUBLISHED.labels(self.service, topic).inc()

    async def publish_many(self, topic: str, events: list[Event],
                           traceparents: Sequence[str | None] | None = None) -> None:
        """Send a batch and wait for every acknowledgement (in order per key). ``traceparents``,
        if given, holds each event's own trace context (None: the current one).

        Filled into aiokafka's record batches per partition rather than sent one by one: the
        relay publishes every chain event through here, and ``send`` per event cost ~12 us of
        CPU more per event (measured), in the process that also serves the ABCI app."""
        producer = self._producer
        partitions = sorted(await producer.partitions_for(topic))
        only = partitions[0] if len(partitions) == 1 else None  # one partition: no key to hash
        open_batches: dict[int, Any] = {}
        futures = []
        for n, e in enumerate(events):
            key, value, headers = e.entity.encode(), e.encode(), _headers(e, traceparents[n] if traceparents else None)
            partition = only if only is not None else self._partitioner(key, partitions, partitions)
            batch = open_batches.get(partition)
            if batch is None:
                batch = open_batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:  # full
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=headers)  # a first record always fits
        for partition, batch in open_batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
        metrics.EVENTS_PUBLISHED.labels(self.service, topic).inc(len(events))


class AppliedLog:
    """The SQLite tables an idempotent consumer keeps beside the handler's own tables."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS applied_events (
                event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, applied_at REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS read_model (id INTEGER PRIMARY KEY CHECK (id = 1), model_id TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS dead_letters (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
                error TEXT NOT NULL, value BLOB, received_at REAL NOT NULL,
                PRIMARY KEY (topic, partition, "offset"));
            CREATE TABLE IF NOT EXISTS positions (
                topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
                PRIMARY KEY (topic, partition));
            """
        )
        # Added with the dead-letter topic. Rows from before it stay local (forwarded = 1).
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(dead_letters)")}
        for column, decl in (("reason", "TEXT NOT NULL DEFAULT ''"), ("key", "BLOB"),
                             ("headers", "TEXT NOT NULL DEFAULT '[]'"), ("attempts", "INTEGER NOT NULL DEFAULT 0"),
                             ("forwarded", "INTEGER NOT NULL DEFAULT 1")):
            if column not in have:
                self.conn.execute(f"ALTER TABLE dead_letters ADD COLUMN {column} {decl}")

    @property
    def model_id(self) -> str:
        """A random id made when this database was: a new (empty) read model gets a new one."""
        self.conn.execute("INSERT OR IGNORE INTO read_model VALUES (1, lower(hex(randomblob(8))))")
        return self.conn.execute("SELECT model_id FROM read_model").fetchone()[0]

    def position(self, tp: TopicPartition) -> int | None:
        """The offset after the last record of ``tp`` this database has applied (or skipped)."""
        row = self.conn.execute("SELECT next_offset FROM positions WHERE topic = ? AND partition = ?",
                                (tp.topic, tp.partition)).fetchone()
        return None if row is None else row[0]

    def advance(self, tp: TopicPartition, offset: int) -> None:
        """Written only after the records before ``offset`` are applied: never ahead of the data."""
        self.conn.execute("INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
                          "DO UPDATE SET next_offset = excluded.next_offset", (tp.topic, tp.partition, offset))

    def applied(self, event_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM applied_events WHERE event_id = ?", (event_id,)).fetchone() is not None

    def keep(self, letter: DeadLetter) -> bool:
        """Store a dead letter to be forwarded; False if this record was already kept (read twice)."""
        headers = json.dumps([[k, None if v is None else bytes(v).hex()] for k, v in letter.headers])
        return self.conn.execute(
            'INSERT OR IGNORE INTO dead_letters (topic, partition, "offset", error, value, received_at, reason, key, '
            "headers, attempts, forwarded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (letter.topic, letter.partition, letter.offset, letter.detail, letter.value, letter.at, letter.reason,
             letter.key, headers, letter.attempts)).rowcount == 1

    def unforwarded(self, service: str, group: str, limit: int = 100) -> list[DeadLetter]:
        rows = self.conn.execute(
            'SELECT topic, partition, "offset", reason, error, attempts, received_at, key, value, headers '
            'FROM dead_letters WHERE forwarded = 0 ORDER BY received_at LIMIT ?', (limit,)).fetchall()
        return [DeadLetter(topic=t, partition=p, offset=o, reason=r, detail=d, service=service, group=group,
                           attempts=a, at=at, key=k, value=v, size=-1 if v is None else len(v),
                           headers=tuple((hk, None if hv is None else bytes.fromhex(hv)) for hk, hv in json.loads(h)))
                for t, p, o, r, d, a, at, k, v, h in rows]

    def forwarded(self, letter: DeadLetter) -> None:
        self.conn.execute('UPDATE dead_letters SET forwarded = 1 WHERE topic = ? AND partition = ? AND "offset" = ?',
                          (letter.topic, letter.partition, letter.offset))

    def count_unforwarded(self) -> int:
        return self.conn.execute("SELECT count(*) FROM dead_letters WHERE forwarded = 0").fetchone()[0]

    def close(self) -> None:
        self.conn.close()


class IdempotentConsumer:
    """Consumes ``topics`` and calls ``handler(event, conn)`` once per event id.

    The handler writes its read model through ``conn`` (the consumer's SQLite connection) and
    must not commit: the consumer wraps the handler and the applied-id record in one
    transaction. No record stops it: one that is not a valid event of its topic (``event_types``:
    the types each topic carries, by default the contract's ``EVENT_TYPES``), or whose handler
    raises ``max_attempts`` times (with doubling backoff from ``retry_backoff_s``), becomes a dead
    letter, and the consumer commits past it. With a ``verifier``, a chain event is applied only
    once the chain confirms it; one it does not hold is a dead letter (``not_on_chain``) and is
    not recorded as applied, so the real event of that id still applies. While the chain node
    does not answer, the consumer waits (up to ``verify_timeout_s``, then ``unverified``). With
    ``verify_if``, only the events it accepts are checked (those the handler would act on).

    With ``batch_transactions``, the records of one partition's poll batch are applied in one
    SQLite transaction instead of one each, each record inside a savepoint of its own: a record
    whose handler raises is rolled back to its savepoint alone (retried, then dead-lettered, its
    dead letter kept in the same transaction), the records around it are kept, and an id applied
    earlier in the batch is seen as applied (no double apply). The batch's transaction commits before its dead letters are forwarded and
    before its Kafka offset is committed; if the process stops inside a batch, nothing of the
    batch is kept and, the offset not being committed, all of it is read again. Only for a
    consumer whose connection nothing else writes through (billing's read model: its API only
    reads): the transaction stays open across the batch's awaits (the chain's proof of an event,
    a retry's backoff), and another coroutine's write would land inside it, or be rolled back
    with a failing record's savepoint. Reads through the connection meanwhile see the batch's
    records applied so far.
    """

    CAREFUL_RECORDS = 1000  # records read one by one per partition while looking for an unreadable one
    # A larger value would not fit a dead-letter record; it is left out (it stays in its source topic).
    FORWARD_MAX_BYTES = MAX_EVENT_BYTES - (16 << 10)
    FORWARD_RETRY_S = 30.0  # how long to wait before forwarding again after the dead-letter topic failed

    def __init__(self, bootstrap: str, service: str, topics: list[str], group_id: str | None, db_path: Path,
                 handler: Handler, *, from_beginning: bool = True,
                 event_types: Mapping[str, Collection[str]] | None = None,
                 max_attempts: int = 4, retry_backoff_s: float = 0.1,
                 verifier: ChainEventVerifier | None = None, verify_timeout_s: float = 60.0,
                 verify_if: Callable[[Event], bool] | None = None, security: KafkaSecurity | None = None,
                 batch_transactions: bool = False):
        """``group_id`` None: one group per read-model database, so a new, empty read model reads
        the topic from the start instead of resuming where another instance's offsets stand.
        ``security``: for the consumer and its dead-letter producer; None, from the environment."""
        self.security = security or KafkaSecurity()
        self.service, self.topics, self.handler = service, topics, handler
        self.event_types = EVENT_TYPES if event_types is None else event_types
        self.max_attempts, self.retry_backoff_s = max(1, max_attempts), retry_backoff_s
        self.verifier, self.verify_timeout_s = verifier, verify_timeout_s
        self.verify_if = verify_if  # None: every chain event; else only those the handler acts on
        self.batch_transactions = batch_transactions
        self._in_batch = False  # inside a poll batch's transaction: each record in a savepoint
        self.store = AppliedLog(db_path)
        # A group of its own: this database's positions are the truth (see the module). A shared group
        # (gateway replicas, each with a database of its own) resumes from the group's offsets.
        self.own_positions = group_id is None
        self.group_id = group_id or f"{service}-{self.store.model_id}"
        self.from_beginning = from_beginning
        self._bootstrap = bootstrap
        self._options = dict(bootstrap_servers=bootstrap, group_id=self.group_id, enable_auto_commit=False,
                             auto_offset_reset="earliest" if from_beginning else "latest",
                             isolation_level="read_committed")
        self._consumer: AIOKafkaConsumer | None = None
        self._dlq: AIOKafkaProducer | None = None
        self._started = False
        self._unforwarded = self.store.count_unforwarded()
        self._forward_after = 0.0
        for topic in topics:  # every series exists from the start, at 0, so increase() sees the first one
            for reason in Reason:
                metrics.DEAD_LETTERS.labels(service, topic, reason)
            metrics.HANDLER_RETRIES.labels(service, topic)
        metrics.DEAD_LETTERS_UNFORWARDED.labels(service).set(self._unforwarded)

    @property
    def conn(self) -> sqlite3.Connection:
        return self.store.conn

    @property
    def ready(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Also safe to call again after it failed: what it had started is stopped first."""
        await self._stop_clients()
        self._consumer = AIOKafkaConsumer(**self._options, **self.security.client_options())
        self._consumer.subscribe(self.topics, listener=_ResumeFromDatabase(self) if self.own_positions else None)
        self._dlq = AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all", enable_idempotence=True,
                                     request_timeout_ms=10_000, **self.security.client_options())
        try:
            await self._consumer.start()
            await self._dlq.start()
        except BaseException:
            await self._stop_clients()
            raise
        self._started = True

    async def stop(self) -> None:
        await self._stop_clients()
        self.store.close()

    async def _stop_clients(self) -> None:
        self._started = False
        for client in (self._consumer, self._dlq):
            if client is not None:
                await client.stop()
        self._consumer = self._dlq = None

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        await self._forward()
        while not stop.is_set():
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=500)
            except UNREADABLE as exc:
                await self._skip_unreadable(exc)
                continue
            for tp, messages in batches.items():
                if self.batch_transactions:
                    await self._apply_batch(messages)
                else:
                    for message in messages:
                        await self._apply(message)
                await self._forward()  # before the commit; a failure leaves them kept locally, not lost
                await self._commit(tp, messages[-1].offset + 1)
            if not batches:
                await self._forward()  # what an earlier attempt could not forward

    async def _apply_batch(self, messages) -> None:
        """``messages`` applied in one transaction, committed before this returns (see the class)."""
        conn = self.store.conn
        conn.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            for message in messages:
                await self._apply(message)
        except BaseException:
            self._in_batch = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # nothing of the batch is kept; its offset is not committed
            raise
        self._in_batch = False
        if conn.in_transaction:
            conn.execute("COMMIT")
            return
        # SQLite itself rolled the whole transaction back (a full disk, an I/O error: a record then
        # failed and was retried on its own): the records before it were lost with it, so the batch
        # is applied again record by record (each id once: those kept since are seen as applied).
        log.warning("%s: a batch's transaction was rolled back by SQLite; applying its %d records one by one",
                    self.service, len(messages))
        for message in messages:
            await self._apply(message)

    async def _apply(self, message) -> None:
        topic = message.topic
        try:
            event = Event.decode(message.value)
        except EventDecodeError as exc:
            self._dead_letter(message, exc.reason, str(exc))
            return
        known = self.event_types.get(topic)
        if known is not None and event.type not in known:
            self._dead_letter(message, Reason.UNKNOWN_TYPE, f"event type {event.type!r} is not one {topic} carries")
            return
        if (self.verifier is not None and topic == CHAIN_EVENTS and (self.verify_if is None or self.verify_if(event))
                and not await self._on_chain(message, event)):
            return
        parent = last_header(message.headers, "traceparent")  # any bytes: read strictly, else a new trace
        token = tracing.set_current(tracing.from_traceparent(parent))
        try:
            if not tracing.enabled():
                await self._apply_with_retries(message, event, topic)
                return
            with tracing.span(f"{topic} process", kind=tracing.CONSUMER, parent=parent, attributes={
                    "messaging.system": "kafka", "messaging.operation.type": "process",
                    "messaging.destination.name": topic, "messaging.consumer.group.name": self.group_id,
                    "rdx.event.id": event.id, "rdx.event.type": event.type}):
                await self._apply_with_retries(message, event, topic)
        finally:
            tracing.reset(token)

    async def _apply_with_retries(self, message, event: Event, topic: str) -> None:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._apply_once(event, topic)
                return
            except Exception as exc:  # noqa: BLE001 - one bad event must not stop the consumer
                self._undo()
                if attempt == self.max_attempts:
                    log.error("event %s (%s) not applied after %d attempts: %s", event.id, event.type, attempt,
                              type(exc).__name__)
                    self._dead_letter(message, Reason.HANDLER_FAILED, f"{type(exc).__name__}: {exc}", attempt)
                    return
                metrics.HANDLER_RETRIES.labels(self.service, topic).inc()
                await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))

    async def _on_chain(self, message, event: Event) -> bool:
        """Whether the chain holds ``event``; if not, it is dead-lettered here."""
        deadline, backoff = time.monotonic() + self.verify_timeout_s, 0.2
        while True:
            try:
                await self.verifier.verify(event)
                return True
            except NotOnChain as exc:
                log.error("chain event %s (%s) is not the chain's: %s", event.id[:40], event.type, exc)
                self._dead_letter(message, Reason.NOT_ON_CHAIN, str(exc))
                return False
            except ChainUnavailable as exc:
                if time.monotonic() > deadline:
                    self._dead_letter(message, Reason.UNVERIFIED, f"the chain node did not answer: {exc}")
                    return False
                log.warning("cannot check chain event %s yet (%s); retrying", event.id[:40], type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _apply_once(self, event: Event, topic: str) -> None:
        conn = self.store.conn
        conn.execute("SAVEPOINT record" if self._in_batch else "BEGIN IMMEDIATE")
        if self.store.applied(event.id):
            self._undo()
            metrics.EVENTS_DUPLICATE.labels(self.service, topic).inc()
            return
        result = self.handler(event, conn)
        if inspect.isawaitable(result):
            await result
        conn.execute("INSERT INTO applied_events VALUES (?, ?, ?)", (event.id, topic, time.time()))
        conn.execute("RELEASE record" if self._in_batch else "COMMIT")
        metrics.EVENTS_CONSUMED.labels(self.service, topic).inc()

    def _undo(self) -> None:
        """Discard the current record's writes: its savepoint in a batch (the batch's other records
        stay), else its transaction."""
        conn = self.store.conn
        if self._in_batch:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO record")
                conn.execute("RELEASE record")
        elif conn.in_transaction:
            conn.execute("ROLLBACK")

    def _dead_letter(self, message, reason: Reason, detail: str, attempts: int = 0) -> None:
        # The log says where and why; the detail may quote the record, so it goes only where the record goes.
        log.warning("dead letter at %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
        metrics.DEAD_LETTERS.labels(self.service, message.topic, reason).inc()
        letter = DeadLetter(topic=message.topic, partition=message.partition, offset=message.offset, reason=reason,
                            detail=detail[:500], service=self.service, group=self.group_id, attempts=attempts,
                            key=message.key, value=message.value, headers=tuple(message.headers or ()),
                            size=-1 if message.value is None else len(message.value))
        if self.store.keep(letter):
            self._unforwarded += 1

    async def _forward(self) -> None:
        """Send the kept dead letters to their dead-letter topics and mark each once acknowledged.
        If the topic cannot take them (missing, not allowed), they wait here and are counted."""
        if self._unforwarded and time.monotonic() >= self._forward_after:
            try:
                for letter in self.store.unforwarded(self.service, self.group_id):
                    if letter.size > self.FORWARD_MAX_BYTES:
                        letter = letter.without_value()
                    # A record needs a key or a value; one with neither (a keyless tombstone) gets b"".
                    key = letter.key if letter.key is not None or letter.value is not None else b""
                    await asyncio.wait_for(self._dlq.send_and_wait(
                        dead_letter_topic(letter.topic), letter.value, key=key, headers=letter.record_headers()), 15.0)
                    self.store.forwarded(letter)
                self._forward_after = 0.0
            except Exception as exc:  # noqa: BLE001 - KafkaError, a timeout: kept, tried again later
                log.error("dead letters not forwarded (%s); kept locally, retrying in %.0fs", type(exc).__name__,
                          self.FORWARD_RETRY_S)
                self._forward_after = time.monotonic() + self.FORWARD_RETRY_S
            self._unforwarded = self.store.count_unforwarded()
        metrics.DEAD_LETTERS_UNFORWARDED.labels(self.service).set(self._unforwarded)

    async def _skip_unreadable(self, exc: Exception) -> None:
        """aiokafka fails a whole fetch on a record it cannot parse, and may already have moved past
        the records before it. So every partition goes back to where it resumes from and is read one
        record at a time; the one that fails is dead-lettered (its bytes cannot be read) and skipped."""
        log.warning("a fetch failed on a record the Kafka client cannot parse (%s); locating it", type(exc).__name__)
        assigned = sorted(self._consumer.assignment())
        for tp in assigned:
            resume = await self._resume_offset(tp)
            if resume is not None:
                self._consumer.seek(tp, resume)
            elif self.from_beginning:
                self._consumer.seek(tp, (await self._consumer.beginning_offsets([tp]))[tp])
        for tp in assigned:
            for _ in range(self.CAREFUL_RECORDS):
                position = await self._consumer.position(tp)
                try:
                    got = await self._consumer.getmany(tp, timeout_ms=200, max_records=1)
                except UNREADABLE as error:
                    self._dead_letter(_Unreadable(tp.topic, tp.partition, position), Reason.UNREADABLE,
                                      f"the Kafka client cannot parse the record: {type(error).__name__}")
                    await self._forward()
                    self._consumer.seek(tp, position + 1)
                    await self._commit(tp, position + 1)
                    return
                if not got.get(tp):
                    break
                await self._apply(got[tp][0])
                await self._commit(tp, got[tp][0].offset + 1)

    async def _resume_offset(self, tp: TopicPartition) -> int | None:
        """Where reading ``tp`` resumes; None: where ``auto_offset_reset`` says (see the module)."""
        committed = await self._consumer.committed(tp)
        stored = self.store.position(tp) if self.own_positions else None
        if committed is None or stored is None:
            return committed
        return min(stored, committed)

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        """Commit ``tp`` up to ``offset``, unless a rebalance gave the partition to another member of
        the group (gateway replicas share one): its new owner reads on from the last committed
        offset, and applying is idempotent, so nothing is lost. Committing it here would raise, and
        an exception in this loop stopped the whole gateway."""
        if self.own_positions:
            self.store.advance(tp, offset)
        if tp not in self._consumer.assignment():
            log.info("%s: %s moved to another consumer of group %s before its commit", self.service, tp, self.group_id)
            return
        try:
            await self._consumer.commit({tp: offset})
        except (CommitFailedError, IllegalStateError) as exc:  # the rebalance raced the check above
            log.warning("%s: commit of %s skipped (%s); its new owner reads on", self.service, tp, type(exc).__name__)
            return
        await self._record_lag(tp)

    async def _record_lag(self, tp: TopicPartition) -> None:
        end = self._consumer.highwater(tp)
        if end is not None:
            try:
                position = await self._consumer.position(tp)
            except IllegalStateError:  # moved to another consumer of the group meanwhile: its lag now
                return
            metrics.CONSUMER_LAG.labels(self.service, tp.topic).set(max(end - position, 0))


class _ResumeFromDatabase(ConsumerRebalanceListener):
    """Each partition assigned starts where ``_resume_offset`` says."""

    def __init__(self, consumer: IdempotentConsumer):
        self.consumer = consumer

    def on_partitions_revoked(self, revoked) -> None:
        pass

    async def on_partitions_assigned(self, assigned) -> None:
        for tp in assigned:
            offset = await self.consumer._resume_offset(tp)
            if offset is not None:
                self.consumer._consumer.seek(tp, offset)


class _Unreadable:
    """Where a record stands that the client could not parse: all that is known of it."""

    def __init__(self, topic: str, partition: int, offset: int):
        self.topic, self.partition, self.offset = topic, partition, offset
        self.key = self.value = None
        self.headers = ()


def last_header(headers, name: str) -> bytes | None:
    """The last value of header ``name`` (a record may repeat a header), or None."""
    values = [v for k, v in headers or () if k == name]
    return values[-1] if values else None
