"""Job status events of several compute replicas, a node on a new volume or a node restarted on a
restored copy of its database never share an id, and an event keeps its id for a re-publish."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from aiokafka.errors import KafkaError

from services.common.events import EVENT_TYPES, JOB_STATUS
from services.common.kafka import AppliedLog
from services.compute.events import STATUS, StatusPublisher
from services.compute.journal import Journal


def replica(path) -> tuple[AppliedLog, StatusPublisher]:
    """A node's journal database, as services/compute/app.py wires it, and its status publisher."""
    store = AppliedLog(path)
    journal = Journal(store.conn)
    journal.add("job-1", "psi", "provider", {"job": "job-1"}, int(time.time()) + 600, 5)
    return store, StatusPublisher(None, "telco", journal.next_seq, store.model_id)


def emitted(publisher: StatusPublisher) -> list:
    out = []
    while not publisher._queue.empty():
        out.append(publisher._queue.get_nowait())
    return out


def test_two_replicas_of_one_member_emit_distinct_ids_for_the_same_job(tmp_path):
    stores, publishers = zip(*(replica(tmp_path / f"node-{i}.sqlite") for i in range(2)))
    for publisher in publishers:
        publisher.emit("job-1", STATUS, type="psi", status="accepted")
        publisher.emit("job-1", STATUS, type="psi", status="running")
    events = [e for p in publishers for e in emitted(p)]
    assert [e.id.rsplit("/", 1)[1] for e in events] == ["1", "2", "1", "2"]  # each counts on its own
    assert len({e.id for e in events}) == 4
    assert {e.id.split("/")[2].split(".")[0] for e in events} == {s.model_id for s in stores}
    assert all(e.type in EVENT_TYPES[JOB_STATUS] and e.entity == "job:job-1" for e in events)


def test_a_node_restarted_on_a_restored_database_names_its_events_anew(tmp_path):
    """docs/operations.md, "Restore everything": the restored journal counts seq again from the
    backup's, so ids made of the database's id and seq alone repeated the lost instance's."""
    store, lost = replica(tmp_path / "node.sqlite")
    backup = tmp_path / "backup.sqlite"
    with sqlite3.connect(backup) as copy:
        store.conn.backup(copy)
    lost.emit("job-1", STATUS, type="psi", status="accepted")
    lost.emit("job-1", STATUS, type="psi", status="running")
    lost_id = store.model_id
    store.close()
    restored = AppliedLog(backup)
    again = StatusPublisher(None, "telco", Journal(restored.conn).next_seq, restored.model_id)
    again.emit("job-1", STATUS, type="psi", status="running")
    first, second = emitted(lost), emitted(again)
    assert [e.id.rsplit("/", 1)[1] for e in first + second] == ["1", "2", "1"]  # the backup's numbering
    assert restored.model_id == lost_id  # the same database, restored
    assert second[0].id not in {e.id for e in first}


async def test_an_event_keeps_its_id_while_the_publisher_retries(tmp_path):
    class Flaky:
        ready, sent, calls = True, [], 0

        async def publish(self, topic, event):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise KafkaError("broker away")
            Flaky.sent.append((topic, event.id))

    store, publisher = replica(tmp_path / "node.sqlite")
    publisher.producer = Flaky()
    publisher.emit("job-1", STATUS, type="psi", status="accepted")
    (event,) = list(publisher._queue._queue)
    stop = asyncio.Event()
    task = asyncio.ensure_future(publisher.run(stop))
    while not Flaky.sent:  # the first send failed; the retry, 0.2 s later, sends the same event
        await asyncio.sleep(0.05)
    stop.set()
    await task
    assert Flaky.calls == 2 and Flaky.sent == [(JOB_STATUS, event.id)]
