"""Issue 15, part 4, through the real broker: two gateway replicas publish their audit records, and
two compute replicas of one member their status events for one job, as they do in production; an
idempotent consumer of each topic then applies every one of them. With ids that collided it
would have dropped the second replica's events as duplicates."""

from __future__ import annotations

import time

import asyncio

from kafkakit import consume_until

from services.common.events import AUDIT, JOB_STATUS
from services.common.kafka import AppliedLog, EventProducer, IdempotentConsumer
from services.compute.events import STATUS, StatusPublisher
from services.compute.journal import Journal
from services.gateway.audit import AuditLog, AuditShipper
from services.gateway.db import SqliteDatabase

async def applied(bootstrap: str, topic: str, prefixes: list[str], want: int, db) -> dict[str, int]:
    """{event id: times applied} of the ids starting with ``prefixes``, by a fresh idempotent consumer
    reading ``topic`` (which other tests' events share) until ``want`` of them are applied."""
    def handler(event, conn):
        conn.execute("INSERT INTO applied VALUES (?)", (event.id,))

    consumer = IdempotentConsumer(bootstrap, "test", [topic], f"g-{time.time_ns()}", db, handler)
    consumer.conn.execute("CREATE TABLE applied (id TEXT)")
    ours = " OR ".join(f"id LIKE '{prefix}%'" for prefix in prefixes)  # test-made ids: hex, digits, '-'
    await consumer.start()
    try:
        await consume_until(consumer, f"SELECT count(*) FROM applied WHERE {ours}", want, timeout=30, settle=1.0)
        return dict(consumer.conn.execute(f"SELECT id, count(*) FROM applied WHERE {ours} GROUP BY id").fetchall())
    finally:
        await consumer.stop()


CALL = dict(ts=1.0, request_id="r", member="bank", role="analyst", key_id="k", method="GET", route="/v1/listings",
            decision="allow", reason="ok", status=200, latency_ms=1.0)


async def test_audit_records_of_two_gateway_replicas_all_apply(kafka, tmp_path):
    producer = EventProducer(kafka.bootstrap, "gateway")
    await producer.start()
    instances = []
    try:
        for i in range(2):
            log = await AuditLog.open(SqliteDatabase(tmp_path / f"gateway-{i}.sqlite"))
            shipper = AuditShipper(log, producer, chain=None, identity=None, every_s=1.0, max_records=100)
            for _ in range(5):
                shipper.submit(await log.append(CALL))
            await shipper._publish_some()
            instances.append(log.instance)
    finally:
        await producer.stop()
    ours = await applied(kafka.bootstrap, AUDIT, [f"audit/{i}/" for i in instances], 10, tmp_path / "c.sqlite")
    assert sorted(ours) == sorted(f"audit/{inst}/{seq}" for inst in instances for seq in range(1, 6))
    assert set(ours.values()) == {1}


async def test_status_events_of_two_compute_replicas_all_apply(kafka, tmp_path):
    job = f"job-{time.time_ns()}"
    producer = EventProducer(kafka.bootstrap, "compute")
    await producer.start()
    try:
        for i in range(2):
            store = AppliedLog(tmp_path / f"node-{i}.sqlite")
            journal = Journal(store.conn)
            journal.add(job, "psi", "provider", {"job": job}, int(time.time()) + 600, 5)
            publisher = StatusPublisher(producer, "telco", journal.next_seq, store.model_id)
            for status in ("accepted", "running", "computed"):
                publisher.emit(job, STATUS, type="psi", status=status, attempt=0)
            stop = asyncio.Event()
            stop.set()  # the publisher sends what is queued, then returns
            await publisher.run(stop)
    finally:
        await producer.stop()
    ours = await applied(kafka.bootstrap, JOB_STATUS, [f"{job}/"], 6, tmp_path / "c.sqlite")
    assert len(ours) == 6 and set(ours.values()) == {1}
