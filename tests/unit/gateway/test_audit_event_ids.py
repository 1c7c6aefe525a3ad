"""Audit events of several gateway replicas never share an id, and a record keeps its id."""

from __future__ import annotations

from services.common.events import AUDIT, EVENT_TYPES, Event
from services.gateway.audit import AuditLog, to_event
from services.gateway.db import SqliteDatabase

CALL = dict(ts=1.0, request_id="r", member="bank", role="analyst", key_id="k", method="GET", route="/v1/listings",
            decision="allow", reason="ok", status=200, latency_ms=1.0)


async def test_two_replicas_number_their_records_alike_but_their_event_ids_differ(tmp_path):
    replicas = [await AuditLog.open(SqliteDatabase(tmp_path / f"replica-{i}.sqlite")) for i in range(2)]
    events = [[to_event(await log.append(CALL), log.instance) for _ in range(3)] for log in replicas]
    assert [[e.data["seq"] for e in es] for es in events] == [[1, 2, 3], [1, 2, 3]]  # each its own trail
    ids = [e.id for es in events for e in es]
    assert len(set(ids)) == 6 and replicas[0].instance != replicas[1].instance
    assert all(e.data["instance"] == log.instance for log, es in zip(replicas, events) for e in es)
    first = events[0][0]
    assert Event.decode(first.encode()) == first and first.type in EVENT_TYPES[AUDIT]


async def test_a_record_published_again_after_a_restart_keeps_its_id(tmp_path):
    log = await AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
    record = await log.append(CALL)
    before = to_event(record, log.instance).id
    await log.db.close()
    again = await AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
    [stored] = await again.query(after_seq=0)
    assert to_event(stored, again.instance).id == before == f"audit/{again.instance}/1"
    assert (await again.append(CALL)).prev_hash == stored.hash  # the trail goes on from its tip
