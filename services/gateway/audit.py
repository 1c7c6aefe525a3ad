"""The gateway's audit trail: every call (who, what, which asset or job, decision, reason,
latency) is appended to a hash-chained log in the gateway's database (SQLite, or PostgreSQL shared
by replicas), published on ``rdx.audit.v1``, and each batch is anchored on chain by the hash of its
last record — by one replica at a time."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Gauge
from pydantic import ValidationError

from services.common.audit import GENESIS, AuditRecord, event_id, record_hash
from services.common.chain import ChainClient, ChainError, TxRejected
from services.common.events import AUDIT, Event, EventDecodeError
from services.common.settings import KafkaSecurity
from services.common.identity import Identity
from services.common.kafka import EventProducer
from services.common.tx import Code, Tx
from services.gateway.db import Database

log = logging.getLogger("rdx.gateway.audit")
COLUMNS = list(AuditRecord.model_fields)
INSERT = f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
DIVERGED = Gauge("rdx_gateway_audit_trail_diverged", "1 while this gateway's audit trail does not hold the record "
                 "the chain's last anchor names (a database restored from a backup, or records lost): nothing is "
                 "anchored meanwhile")
DIVERGED_LOG_EVERY_S = 60.0
RESTORE_MOST = 100_000  # records a start takes back from rdx.audit.v1 at most (held in memory meanwhile)


class AuditLog:
    """One hash-chained trail per database. Replicas sharing a PostgreSQL database append to the same
    trail: each append holds the trail's lock while it reads the tip and writes the next record, so
    ``seq`` stays gap-free and unique and every record chains to the one before it."""

    def __init__(self, db: Database, instance: str):
        self.db, self.instance = db, instance

    @classmethod
    async def open(cls, db: Database) -> "AuditLog":
        async with db.locked("schema") as tx:
            await tx.execute("""CREATE TABLE IF NOT EXISTS audit (
                seq BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, request_id TEXT, member TEXT, role TEXT,
                key_id TEXT, method TEXT, route TEXT, asset TEXT, job TEXT, decision TEXT, reason TEXT,
                status INTEGER, latency_ms DOUBLE PRECISION, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""")
            await tx.execute("CREATE TABLE IF NOT EXISTS anchored (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT)")
            # Made once with the database, as its seq numbering is: the trail's name on rdx.audit.v1.
            await tx.execute("CREATE TABLE IF NOT EXISTS instance (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT)")
            await tx.execute("INSERT INTO instance VALUES (1, ?) ON CONFLICT (id) DO NOTHING", (secrets.token_hex(8),))
            for col in ("member", "asset", "job", "ts"):
                await tx.execute(f"CREATE INDEX IF NOT EXISTS audit_{col} ON audit({col})")
            [(instance,)] = await tx.fetch("SELECT name FROM instance")
        return cls(db, instance)

    async def append(self, fields: dict[str, Any]) -> AuditRecord:
        # A NUL (a decoded %00 in a path) is stored alike by both engines, and hashed as stored.
        fields = {k: v.replace("\x00", "\ufffd") if isinstance(v, str) else v for k, v in fields.items()}
        async with self.db.locked("audit") as tx:
            last = await tx.fetch("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (last[0][0] + 1, last[0][1]) if last else (1, GENESIS)
            record = AuditRecord(**fields, seq=seq, prev_hash=prev)
            record = record.model_copy(update={"hash": record_hash(record.body())})
            await tx.execute(INSERT, [getattr(record, c) for c in COLUMNS])
            return record

    async def query(self, *, member: str | None = None, asset: str | None = None, job: str | None = None,
                    since: float | None = None, until: float | None = None, after_seq: int = 0,
                    limit: int = 100) -> list[AuditRecord]:
        where, args = ["seq > ?"], [after_seq]
        for col, value in (("member", member), ("asset", asset), ("job", job)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        rows = await self.db.fetch(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {' AND '.join(where)} "
                                   "ORDER BY seq LIMIT ?", [*args, limit])
        return [AuditRecord(**dict(zip(COLUMNS, r))) for r in rows]

    async def anchored_seq(self) -> int:
        rows = await self.db.fetch("SELECT seq FROM anchored")
        return rows[0][0] if rows else 0

    async def mark_anchored(self, seq: int) -> None:
        await self.db.execute("INSERT INTO anchored VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
                              (seq,))

    async def last_seq(self) -> int:
        rows = await self.db.fetch("SELECT max(seq) FROM audit")
        return rows[0][0] or 0


def _digest(anchor: Any) -> str | None:
    """The digest an anchor as the chain node answered names (None for any other answer)."""
    return anchor.get("digest") if isinstance(anchor, dict) else None


async def restore_anchored(log_: AuditLog, chain: ChainClient, bootstrap: str,
                           timeout_s: float = 30.0) -> list[AuditRecord]:
    """At a start, before any call is recorded: a trail behind the chain's last anchor (its database
    restored from a backup taken before it) takes the anchored records it lacks back from
    rdx.audit.v1, where its gateway published them under its instance. They are found from the
    anchor down: the record whose hash is the anchor's digest, then the one whose hash that record
    names as its previous, and so on to this trail's last record, each hash recomputed. Whoever
    can write to the topic cannot add a record: it would not be on that path. Records published
    after the last anchor are not taken (nothing vouches for them). Returns the records added: none
    when none were needed, or they could not all be found (logged), in which case the trail stays
    as it is and ``AuditShipper`` says it has diverged."""
    try:
        anchored = await chain.query("/audit/last") or 0
        held = await log_.last_seq()
        if held >= anchored:
            return []
        if anchored - held > RESTORE_MOST:
            log.error("the audit trail ends at record %d, the chain anchored up to %d: more than %d records to "
                      "take back from rdx.audit.v1; not tried", held, anchored, RESTORE_MOST)
            return []
        digest = _digest(await chain.query(f"/audit/anchors/{anchored:012d}"))
    except (ChainError, TypeError) as exc:
        log.warning("the chain's audit anchors could not be read at start (%s); the trail is checked against "
                    "them when anchoring", type(exc).__name__)
        return []
    if digest is None:  # no anchor to walk down from: the topic is not read
        log.error("the chain's node names no digest for its last audit anchor (%d); nothing taken back", anchored)
        return []
    tip = (await log_.query(after_seq=held - 1, limit=1))[0].hash if held else GENESIS
    try:
        found = await asyncio.wait_for(_published(log_.instance, held, anchored, bootstrap), timeout_s)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        log.error("the audit trail ends at record %d, the chain anchored up to %d, and rdx.audit.v1 could not "
                  "be read (%s)", held, anchored, type(exc).__name__)
        return []
    path, want = [], digest
    for seq in range(anchored, held, -1):
        record = found.get((seq, want))
        if record is None:
            log.error("the audit trail ends at record %d, the chain anchored up to %d, and rdx.audit.v1 does not "
                      "hold anchored record %d of this trail (instance %s)", held, anchored, seq, log_.instance)
            return []
        path.append(record)
        want = record.prev_hash
    if want != tip:
        log.error("the records on rdx.audit.v1 anchored up to %d do not follow this trail's record %d", anchored, held)
        return []
    async with log_.db.locked("audit") as tx:
        if ((await tx.fetch("SELECT max(seq) FROM audit"))[0][0] or 0) != held:
            return []  # another replica took them back meanwhile
        for record in reversed(path):
            await tx.execute(INSERT, [getattr(record, c) for c in COLUMNS])
    log.warning("the audit trail ended at record %d, before the chain's last anchor: records %d..%d taken back "
                "from rdx.audit.v1 (a database restored from a backup?)", held, held + 1, anchored)
    return path[::-1]


async def _published(instance: str, after: int, upto: int, bootstrap: str) -> dict[tuple[int, str], AuditRecord]:
    """{(seq, hash): record} of ``instance``'s records after ``after`` up to ``upto`` on rdx.audit.v1,
    each whose hash is its own (recomputed); anything else there is passed over."""
    options = dict(bootstrap_servers=bootstrap, **KafkaSecurity().client_options())
    found: dict[tuple[int, str], AuditRecord] = {}
    admin = AIOKafkaAdminClient(**options)
    try:
        await admin.start()
        parts = [TopicPartition(AUDIT, p["partition"]) for t in await admin.describe_topics([AUDIT])
                 if not t["error_code"] for p in t["partitions"]]
    finally:
        await admin.close()
    if not parts:  # absent, or not visible to this user
        return found
    # Assigned before anything else: aiokafka 0.14's consumer without a group, stopped with nothing
    # assigned, raises CancelledError from its stop().
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **options)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        remaining = {tp for tp in parts if ends[tp] > 0}
        while remaining:
            for tp, messages in (await consumer.getmany(*remaining, timeout_ms=500)).items():
                for m in messages:
                    try:
                        data = dict(Event.decode(m.value).data)
                        if data.pop("instance", None) != instance or not after < data.get("seq", 0) <= upto:
                            continue
                        record = AuditRecord(**data)
                    except (EventDecodeError, ValidationError, TypeError):
                        continue
                    if record_hash(record.body()) == record.hash and len(found) < RESTORE_MOST:
                        found[(record.seq, record.hash)] = record
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return found


def to_event(record: AuditRecord, instance: str) -> Event:
    """A record on rdx.audit.v1, with the trail it belongs to (``instance``: seq and hash chain are per trail)."""
    return Event(id=event_id(instance, record.seq), type="ApiCall", entity=f"member:{record.member or '-'}",
                 source="gateway", data={**record.model_dump(), "instance": instance})


class AuditShipper:
    """Publishes records to Kafka and anchors batches on chain, off the request path."""

    def __init__(self, log_: AuditLog, producer: EventProducer, chain: ChainClient, identity: Identity | None,
                 every_s: float, max_records: int):
        self.log, self.producer, self.chain, self.identity = log_, producer, chain, identity
        self.every, self.max = every_s, max_records
        self.queue: asyncio.Queue[AuditRecord] = asyncio.Queue(maxsize=10_000)
        self._diverged_logged = -DIVERGED_LOG_EVERY_S  # monotonic time of the last such error logged
        self._wake = asyncio.Event()  # a turn now, not at the next ``every``

    def submit(self, record: AuditRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:  # the store has it; Kafka gets it on the next replay
            log.warning("audit queue full; record %d kept in the store only", record.seq)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()  # a wake from here on asks for the next turn
            await self._publish_some()
            if self.identity is not None:
                try:
                    async with self.log.db.try_lock("anchor") as mine:
                        if mine:  # another replica is anchoring now; the next turn may be ours
                            await self._anchor()
                except Exception as exc:  # noqa: BLE001 - chain away: anchor later, nothing is lost
                    log.warning("audit anchoring failed: %s", type(exc).__name__)
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self.every, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def anchored_through(self, seq: int, timeout: float) -> bool:
        """Whether record ``seq`` is anchored on chain within ``timeout`` seconds, asking for a turn of
        publishing and anchoring now. A key revocation waits for it: a gateway restored from a backup
        takes back only anchored records (``restore_anchored``), so until then a restore would bring
        the key back. Any replica's anchor counts (the chain's ``audit/last``); on timeout, or with no
        anchoring identity, False: the caller goes on, the next turn anchors it."""
        if self.identity is None:
            return False
        deadline = time.monotonic() + timeout
        pause = 0.02
        self._wake.set()  # cleared when a turn begins: a turn under way now is followed by another
        while True:
            try:
                last = await self.chain.query("/audit/last")
            except Exception:  # noqa: BLE001 - chain away or an answer that is no JSON: ask again until the timeout
                last = None
            if type(last) is int and last >= seq:  # noqa: E721 - a bool or a numeric string is no anchor height
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    async def _continues(self, anchored: int) -> bool:
        """Whether this trail holds the record the chain's last anchor names, with the hash it names.
        A database restored from before that anchor does not (nor does one that lost records): its
        next records would take seq numbers the chain has anchored for other records, and anchoring
        after them would tie the chain to two trails. So nothing is anchored then, the gauge says
        so and the log says it once a minute, until an operator restores the trail."""
        if anchored == 0:
            DIVERGED.set(0)
            return True
        digest = _digest(await self.chain.query(f"/audit/anchors/{anchored:012d}"))
        held = await self.log.query(after_seq=anchored - 1, limit=1)
        if held and held[0].seq == anchored and held[0].hash == digest:
            DIVERGED.set(0)
            self._diverged_logged = -DIVERGED_LOG_EVERY_S
            return True
        DIVERGED.set(1)
        if time.monotonic() - self._diverged_logged >= DIVERGED_LOG_EVERY_S:
            self._diverged_logged = time.monotonic()
            ends = await self.log.last_seq()
            log.error("the audit trail does not continue the chain's anchors: the chain anchored records up to %d, "
                      "this trail %s; nothing is anchored until the trail is restored (a database restored from a "
                      "backup, or another gateway's? the anchored records are on rdx.audit.v1)", anchored,
                      f"ends at {ends}" if ends < anchored else f"holds another record {anchored}")
        return False

    async def _publish_some(self) -> None:
        batch = []
        while not self.queue.empty() and len(batch) < 1000:
            batch.append(self.queue.get_nowait())
        if batch:
            events = [to_event(r, self.log.instance) for r in batch]
            try:
                await self.producer.publish_many(AUDIT, events)
            except Exception as exc:  # noqa: BLE001
                log.warning("audit publish failed (%s); %d records stay in the store", type(exc).__name__, len(batch))

    async def _anchor(self) -> None:
        # The chain is the truth of what is anchored (a crash may fall between its commit and ours).
        anchored = await self.chain.query("/audit/last") or 0
        if not await self._continues(anchored):
            return
        first, last = anchored + 1, await self.log.last_seq()
        if last < first:
            return
        last = min(last, first + self.max - 1)
        record = (await self.log.query(after_seq=last - 1, limit=1))[0]
        # Replicas share the gateway's key: the nonce another replica used is re-read from the chain.
        nonce = await self.chain.next_nonce(self.identity.account)
        tx = Tx.build(self.identity, self.chain.chain_id, "audit.Anchor", nonce,
                      {"first_seq": first, "last_seq": last, "digest": record.hash})
        checked = await self.chain.broadcast(tx.encode())
        if checked["code"] != Code.OK:
            raise TxRejected(checked["code"], checked.get("log", ""), tx.hash)
        await self.chain.wait_for(tx.hash)
        await self.log.mark_anchored(last)
