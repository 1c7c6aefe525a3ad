"""What the compute node consumes and emits on Kafka.

Consumes ``rdx.chain.events.v1`` (the chain's committed events, through the relay):

- ``JobAuthorized``: a job this member takes part in → journal it and run this node's part;
- ``JobAborted``, ``MemberSuspended``, ``AssetSuspended``, ``AssetDelisted`` → the kill switch:
  every running job the event touches stops at once and is recorded as aborted;
- ``JobFailed``, ``JobCompleted`` → the job's end as the chain decided it; ``JobSettled`` → what
  it cost (kept in the journal);
- ``JobAttested``, ``JobLocked``, ``JobReleased`` (and ``JobCompleted``) about a job this node is
  waiting on → its next proven read of the job now, not at its next poll (a hint, never decided on).

Emits on ``rdx.jobs.status.v1`` (entity ``job:<id>``, id ``<job>/<member>/<instance>/<seq>``, where
``seq`` counts in the node's journal and ``instance`` is that journal database's random id and a
random id of this start: a re-publish (the queue's retries) keeps its id, and replicas, a node on a
new volume and a node restarted on a restored copy of its database never reuse one, though ``seq``
then counts again from the backup's):

- ``JobStatus`` {job, member, type, status, attempt, reason?, records_used?, result_hash?, stopped_ms?}
  whenever this node's status of the job changes (accepted, running, retrying, computed,
  attested, completed, failed, aborted);
- ``JobProgress`` {job, member, type, phase, done, total} at most once a second while running.

Never a data value, a key, a masked element or a result: counts, phases, hashes and reasons.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from aiokafka.errors import KafkaError

from services.common.events import JOB_STATUS, Event
from services.common.kafka import EventProducer

log = logging.getLogger("rdx.compute.events")

JOB_AUTHORIZED = "JobAuthorized"
JOB_ABORTED = "JobAborted"
JOB_FAILED = "JobFailed"
JOB_COMPLETED = "JobCompleted"
JOB_SETTLED = "JobSettled"
JOB_ATTESTED = "JobAttested"  # these three only wake a node polling for the job (lifecycle.WAKE_ON)
JOB_LOCKED = "JobLocked"
JOB_RELEASED = "JobReleased"
MEMBER_SUSPENDED = "MemberSuspended"
ASSET_SUSPENDED = "AssetSuspended"
ASSET_DELISTED = "AssetDelisted"
KILL_SWITCH = (JOB_ABORTED, MEMBER_SUSPENDED, ASSET_SUSPENDED, ASSET_DELISTED)

STATUS = "JobStatus"
PROGRESS = "JobProgress"


class StatusPublisher:
    """Queues status events and publishes them in order in the background, so a slow or absent
    broker never holds up a job (and never the kill switch). Retries until acknowledged."""

    def __init__(self, producer: EventProducer, member: str, next_seq, journal_id: str):
        # Events queued before a stop are dropped, never sent again by the next start, so nothing
        # needs an id to outlive the process; a restored journal numbers on from its backup.
        self.producer, self.member, self._next_seq = producer, member, next_seq
        self.instance = f"{journal_id}.{secrets.token_hex(4)}"
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, job: str, type_: str, **data) -> None:
        seq = self._next_seq(job)
        event = Event(id=f"{job}/{self.member}/{self.instance}/{seq}", type=type_, entity=f"job:{job}",
                      source="compute", data={"job": job, "member": self.member, **data})
        self._queue.put_nowait(event)

    async def run(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and self._queue.empty()):
            try:
                event = await asyncio.wait_for(self._queue.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            backoff = 0.2
            while True:
                try:
                    if not self.producer.ready:
                        raise KafkaError("the producer is not started")
                    await self.producer.publish(JOB_STATUS, event)
                    break
                except (KafkaError, asyncio.TimeoutError) as exc:
                    if stop.is_set():
                        log.warning("status event %s not published before shutdown (%s)", event.id, type(exc).__name__)
                        break
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
