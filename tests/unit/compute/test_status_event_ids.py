"""Job status events of several compute replicas (or a node on a new volume) never share an id, and
an event keeps its id for a re-publish."""

from __future__ import annotations

import time

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
    assert {e.id.split("/")[2] for e in events} == {s.model_id for s in stores}
    assert all(e.type in EVENT_TYPES[JOB_STATUS] and e.entity == "job:job-1" for e in events)


def test_the_instance_id_lives_with_the_journal(tmp_path):
    store, publisher = replica(tmp_path / "node.sqlite")
    instance = publisher.instance
    store.close()
    again = AppliedLog(tmp_path / "node.sqlite")
    assert again.model_id == instance  # a restart on the same volume: the same numbering, the same name
