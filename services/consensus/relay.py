"""The relay: every event of every committed block goes to Kafka, in order, at least once.

It reads the chain database's event outbox (written in the same SQLite transaction as the
block), publishes a batch, waits for the broker's acknowledgement, and only then records the
position. After a crash it starts again from the recorded position; the events it publishes
twice carry the same id, and consumers apply each id once. The chain never waits for Kafka:
if the broker is away, the relay falls behind and catches up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from prometheus_client import Gauge

from services.common import tracing
from services.common.events import CHAIN_EVENTS, Event
from services.common.kafka import EventProducer
from services.common.settings import SettingRefused
from services.consensus.state import ChainEvent, Database

log = logging.getLogger("rdx.consensus.relay")
RELAY_HEIGHT = Gauge("rdx_relay_published_height",
                     "height up to which every chain event is acknowledged by Kafka (the committed height when idle)")


def to_event(e: ChainEvent) -> Event:
    """The published form of a chain event. Its fields come from the chain's own committed events,
    already valid, so nothing is validated (thousands a second were a measurable share of the
    consensus process's time): the instance ``Event.model_construct`` makes with every field given
    (tests/unit/consensus/test_relay_events.py holds it to that), without that method's walk over
    each field's aliases and defaults, which cost half of it (~3 us an event)."""
    event = _new(Event)
    _setattr(event, "__dict__", {"id": e.id, "type": e.type, "version": 1, "entity": e.entity, "source": "consensus",
                                 "occurred_at": _block_time(e.time), "data": {**e.data, "height": e.height}})
    _setattr(event, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    _setattr(event, "__pydantic_extra__", None)
    _setattr(event, "__pydantic_private__", None)
    return event


_new, _setattr = Event.__new__, object.__setattr__
_EVENT_FIELDS = frozenset(Event.model_fields)


@lru_cache(maxsize=64)
def _block_time(seconds: int) -> datetime:
    """A block's time as the events' ``occurred_at`` (immutable, so shared): every event of a block
    has the same, and making it was half of ``to_event``'s cost."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def _new_traceparents(n: int) -> list[str]:
    """``n`` traceparents of new traces, each ``tracing.to_traceparent(tracing.new_trace_id())``'s
    form: a random 16-byte trace id and 8-byte parent id, sampled."""
    ids = os.urandom(24 * n).hex()
    return [f"00-{ids[i:i + 32]}-{ids[i + 32:i + 48]}-01" for i in range(0, 48 * n, 48)]


RECORD_BATCH_BYTES = 512 << 10
"""How large a record batch the relay fills (aiokafka's ``max_batch_size``, 16 KiB by default; the
broker takes up to 1 MiB). aiokafka sends one batch per partition per produce request, and the
relay waits for each acknowledgement: with 16 KiB batches a block of settlements (~300 bytes an
event, 8 events a settlement) went out as a run of produce requests one after another, each one
handled by the broker and each waking the consumers' fetches (and their offset commits) again."""


def relay_producer(bootstrap: str) -> EventProducer:
    """The relay's producer: ``EventProducer`` (acks=all, idempotent) filling batches of up to
    ``RECORD_BATCH_BYTES``, so that a publish of up to ``Relay.batch`` events is one produce request."""
    return EventProducer(bootstrap, "consensus", max_batch_bytes=RECORD_BATCH_BYTES)


class RelayPosition:
    """The last event id the broker acknowledged, in its own small database.

    It is written only after the broker acknowledged every event up to it, so it can never be ahead
    of Kafka; what it saves is work. A process crash loses no write (WAL); a power loss may lose
    the last few, and the relay then publishes those events again under the same ids, which every
    consumer applies once. So a write is not synced to disk (synchronous=NORMAL): with a rollback
    journal and synchronous=FULL each one (one per block) cost several fsyncs, in the process and
    on the event loop that also serve the ABCI connections."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE IF NOT EXISTS position (id INTEGER PRIMARY KEY CHECK (id = 1), "
                          "height INTEGER, tx_index INTEGER, event_index INTEGER)")

    def get(self) -> tuple[int, int, int]:
        row = self.conn.execute("SELECT height, tx_index, event_index FROM position").fetchone()
        return tuple(row) if row else (0, -2, -1)

    def set(self, e: ChainEvent) -> None:
        self.conn.execute("INSERT OR REPLACE INTO position VALUES (1, ?, ?, ?)", (e.height, e.tx_index, e.event_index))


class Relay:
    def __init__(self, chain_db_path: Path, position_path: Path, bootstrap: str, *, batch: int = 1000):
        self.chain = Database(chain_db_path)  # its own connection: reads never block the app's commits
        self.position = RelayPosition(position_path)
        self.bootstrap = bootstrap
        self.producer = relay_producer(bootstrap)
        self.batch = batch
        self._wake = asyncio.Event()
        self.connected = False

    def notify(self, _height: int) -> None:
        """Called by the app after each Commit, from the same event loop."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                if not self.connected:
                    await self.producer.start()
                    self.connected = True
                    backoff = 0.5
                published = await self.publish_pending()
            except Exception as exc:  # noqa: BLE001 - broker away: retry, the outbox keeps everything
                # A validator keeps deciding blocks with its Kafka settings wrong, so it says why here
                # (a SettingRefused names the setting and the reason, never a secret) and retries.
                why = str(exc) if isinstance(exc, SettingRefused) else type(exc).__name__
                log.warning("relay cannot publish (%s); retrying in %.1fs", why, backoff)
                await self._reset_producer()
                await self._sleep(stop, backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if not published:
                self._wake.clear()
                await self._sleep(stop, 1.0, self._wake)
        await self._reset_producer()
        self.chain.close()

    async def publish_pending(self) -> int:
        """Publish what is past the recorded position; returns how many events went out."""
        events = self.chain.events_after(self.position.get(), self.batch)
        if not events:
            RELAY_HEIGHT.set(self.chain.height)  # nothing left: caught up with every committed block
            return 0
        spans, traceparents = self._trace(events)  # every event's, by its tx's trace or a new one
        try:
            await self.producer.publish_many(CHAIN_EVENTS, [to_event(e) for e in events], traceparents)
        except BaseException as exc:  # the broker did not take them: failed spans (a retry makes new ones)
            tracing.end(spans, exc)
            raise
        tracing.end(spans)
        self.position.set(events[-1])  # only after every event of the batch is acknowledged
        RELAY_HEIGHT.set(events[-1].height)
        return len(events)

    @staticmethod
    def _trace(events: list[ChainEvent]) -> tuple[list, list[str]]:
        """A publish span per event whose tx carried a trace, child of that trace (the gateway's
        broadcast), and the traceparent each event's record carries on. With tracing off, the tx's
        own context is passed on as it is. An event of an untraced tx starts a trace of its own, as
        the producer's default header would (the relay works in no trace), made for the whole batch
        at once: one ``os.urandom`` call instead of the default's two and its OpenTelemetry lookup
        of a current span, per event (~3 us)."""
        fresh = _new_traceparents(len(events))
        if not any(e.trace for e in events):
            return [], fresh
        spans, traceparents = [], []
        for e, new in zip(events, fresh):
            span = e.trace and tracing.start_span(f"{CHAIN_EVENTS} publish", kind=tracing.PRODUCER, parent=e.trace,
                                                  attributes={"messaging.system": "kafka",
                                                              "messaging.operation.type": "publish",
                                                              "messaging.destination.name": CHAIN_EVENTS,
                                                              "rdx.event.id": e.id, "rdx.event.type": e.type,
                                                              "rdx.chain.height": e.height})
            if span is not None:
                spans.append(span)
            traceparents.append((tracing.traceparent_of(span) if span is not None else tracing.valid_traceparent(e.trace))
                                or new)
        return spans, traceparents

    async def _reset_producer(self) -> None:
        """Drop the producer (it may be half-started after a failure) and make a fresh one."""
        self.connected = False
        try:
            await self.producer.stop()
        except Exception:  # noqa: BLE001 - it is being replaced anyway
            pass
        self.producer = relay_producer(self.bootstrap)

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float, wake: asyncio.Event | None = None) -> None:
        waiters = [asyncio.create_task(stop.wait())]
        if wake is not None:
            waiters.append(asyncio.create_task(wake.wait()))
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
