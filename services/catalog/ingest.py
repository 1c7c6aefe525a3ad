"""The read model's only writer: an idempotent consumer of the chain topic.

Each event is applied once (services/common/kafka.py: the handler's writes and the applied id
commit in one SQLite transaction). The consumer group is named after the read model's id
(store.init), so an empty read model, whether new, deleted to be rebuilt, or another
replica's, reads the topic from offset 0.

``caught_up`` turns true once the consumer has committed past the end of the topic as it was
when the catalog started: until then a search would answer from a partial index.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Histogram

from services.catalog import events, store
from services.common.events import CHAIN_EVENTS, Event
from services.common.kafka import IdempotentConsumer
from services.common.settings import KafkaSecurity

log = logging.getLogger("rdx.catalog.ingest")

INDEX_DELAY = Histogram(
    "rdx_catalog_index_delay_seconds", "from a listing event's block time to its indexing (after catch-up)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0))


class Ingest:
    def __init__(self, bootstrap: str, db_path: Path, *, topic: str = CHAIN_EVENTS,
                 security: KafkaSecurity | None = None):
        self.security = security or KafkaSecurity()  # None: from the RDX_KAFKA_* environment
        db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.model_id = _open(db_path)
        except store.SchemaMismatch as exc:
            # A read model is derived data: one written by another version is rebuilt from the topic.
            log.warning("%s; rebuilding it from the topic", exc)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_path}{suffix}").unlink(missing_ok=True)
            self.model_id = _open(db_path)
        self.bootstrap, self.topic, self.db_path = bootstrap, topic, db_path
        self.group = f"catalog-{self.model_id}"
        self.consumer = IdempotentConsumer(bootstrap, "catalog", [topic], self.group, db_path, self._handle,
                                           security=self.security)
        self.caught_up = False
        self._running = False
        self._target: dict[TopicPartition, int] = {}

    @property
    def ready(self) -> bool:
        return self.consumer.ready and self._running

    def _handle(self, event: Event, conn: sqlite3.Connection) -> None:
        events.apply(event, conn)
        if self.caught_up and event.type.startswith("Asset"):
            INDEX_DELAY.observe(max(time.time() - event.occurred_at.timestamp(), 0.0))

    async def start(self) -> None:
        self._target = await end_offsets(self.bootstrap, self.topic, self.security)
        await self.consumer.start()
        log.info("catalog read model %s consuming %s from %s", self.model_id, self.topic,
                 "the start" if not self._target else f"committed offsets (end now {sum(self._target.values())})")

    async def stop(self) -> None:
        await self.consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        self._running = True
        watcher = asyncio.create_task(self._watch(stop))
        try:
            await self.consumer.run(stop)
        finally:
            self._running = False
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, stop: asyncio.Event) -> None:
        """Poll the group's committed offsets until they reach the end offsets seen at start."""
        if not any(self._target.values()):
            self.caught_up = True
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security.client_options())
        await admin.start()
        try:
            while not stop.is_set():
                try:
                    committed = await admin.list_consumer_group_offsets(self.group)
                except Exception as exc:  # noqa: BLE001 - the coordinator may still be electing; try again
                    log.debug("committed offsets not available yet: %r", exc)
                    committed = {}
                if all((committed.get(tp).offset if committed.get(tp) else 0) >= end
                       for tp, end in self._target.items()):
                    self.caught_up = True
                    log.info("catalog caught up with %s", self.topic)
                    return
                await asyncio.sleep(0.5)
        finally:
            await admin.close()


def _open(db_path: Path) -> str:
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        model_id = store.init(conn)
        conn.commit()  # the id must outlive this process, or every restart would be a rebuild in a new group
        return model_id
    finally:
        conn.close()


async def end_offsets(bootstrap: str, topic: str,
                      security: KafkaSecurity | None = None) -> dict[TopicPartition, int]:
    """The topic's end offset per partition now ({} if the topic does not exist yet)."""
    options = (security or KafkaSecurity()).client_options()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for t in described if t["topic"] == topic and not t["error_code"]
                        for p in t["partitions"])
    if not partitions:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **options)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets([TopicPartition(topic, p) for p in partitions]))
    finally:
        await consumer.stop()
