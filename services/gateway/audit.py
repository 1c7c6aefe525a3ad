"""The gateway's audit trail: every call (who, what, which asset or job, decision, reason,
latency) is appended to a hash-chained log in the gateway's database (SQLite, or PostgreSQL shared
by replicas), published on ``rdx.audit.v1``, and each batch is anchored on chain by the hash of its
last record — by one replica at a time."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from services.common.audit import GENESIS, AuditRecord, event_id, record_hash
from services.common.chain import ChainClient, TxRejected
from services.common.events import AUDIT, Event
from services.common.identity import Identity
from services.common.kafka import EventProducer
from services.common.tx import Code, Tx
from services.gateway.db import Database

log = logging.getLogger("rdx.gateway.audit")
COLUMNS = list(AuditRecord.model_fields)


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
            await tx.execute(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             [getattr(record, c) for c in COLUMNS])
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

    def submit(self, record: AuditRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:  # the store has it; Kafka gets it on the next replay
            log.warning("audit queue full; record %d kept in the store only", record.seq)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._publish_some()
            if self.identity is not None:
                try:
                    async with self.log.db.try_lock("anchor") as mine:
                        if mine:  # another replica is anchoring now; the next turn may be ours
                            await self._anchor()
                except Exception as exc:  # noqa: BLE001 - chain away: anchor later, nothing is lost
                    log.warning("audit anchoring failed: %s", type(exc).__name__)
            try:
                await asyncio.wait_for(stop.wait(), self.every)
            except asyncio.TimeoutError:
                pass

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
        first, last = (await self.chain.query("/audit/last") or 0) + 1, await self.log.last_seq()
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
