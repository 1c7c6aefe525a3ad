"""The gateway's audit trail: every call (who, what, which asset or job, decision, reason,
latency) is appended to a hash-chained SQLite log, published on ``rdx.audit.v1``, and each batch
is anchored on chain by the hash of its last record."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

from services.common.audit import GENESIS, AuditRecord, event_id, record_hash
from services.common.chain import ChainClient
from services.common.events import AUDIT, Event
from services.common.identity import Identity
from services.common.kafka import EventProducer

log = logging.getLogger("rdx.gateway.audit")
COLUMNS = list(AuditRecord.model_fields)


class AuditLog:
    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; a power cut may lose the last records, which
        # the anchors would then show as missing rather than let pass silently.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"""CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT, member TEXT, role TEXT, key_id TEXT,
            method TEXT, route TEXT, asset TEXT, job TEXT, decision TEXT, reason TEXT, status INTEGER,
            latency_ms REAL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""")
        self.conn.execute("CREATE TABLE IF NOT EXISTS anchored (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER)")
        # Made once with the database, as its seq numbering is: the trail's name among replicas.
        self.conn.execute("CREATE TABLE IF NOT EXISTS instance (id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT)")
        self.conn.execute("INSERT OR IGNORE INTO instance VALUES (1, lower(hex(randomblob(8))))")
        self.instance = self.conn.execute("SELECT name FROM instance").fetchone()[0]
        for col in ("member", "asset", "job", "ts"):
            self.conn.execute(f"CREATE INDEX IF NOT EXISTS audit_{col} ON audit({col})")
        self._lock = threading.Lock()
        # The chain's tip, read once: every call appends, so it is not read back on the request path.
        last = self.conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._tip = (last[0], last[1]) if last else (0, GENESIS)

    def append(self, fields: dict[str, Any]) -> AuditRecord:
        with self._lock:
            seq, prev = self._tip[0] + 1, self._tip[1]
            record = AuditRecord(**fields, seq=seq, prev_hash=prev)
            record = record.model_copy(update={"hash": record_hash(record.body())})
            self.conn.execute(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                              [getattr(record, c) for c in COLUMNS])
            self._tip = (seq, record.hash)
            return record

    def query(self, *, member: str | None = None, asset: str | None = None, job: str | None = None,
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
        rows = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM audit WHERE {' AND '.join(where)} "
                                 "ORDER BY seq LIMIT ?", [*args, limit]).fetchall()
        return [AuditRecord(**dict(zip(COLUMNS, r))) for r in rows]

    def anchored_seq(self) -> int:
        row = self.conn.execute("SELECT seq FROM anchored").fetchone()
        return row[0] if row else 0

    def mark_anchored(self, seq: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO anchored VALUES (1, ?)", (seq,))

    def last_seq(self) -> int:
        return self._tip[0]


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
        first, last = (await self.chain.query("/audit/last") or 0) + 1, self.log.last_seq()
        if last < first:
            return
        last = min(last, first + self.max - 1)
        record = self.log.query(after_seq=last - 1, limit=1)[0]
        await self.chain.submit(self.identity, "audit.Anchor", {"first_seq": first, "last_seq": last,
                                                                "digest": record.hash})
        self.log.mark_anchored(last)
