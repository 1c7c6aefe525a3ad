"""The job lifecycle, driven by the chain: authorised → run with the peers → attest; or fail; or
stop at once when the kill switch says so. It knows no protocol: job types do (jobtypes/).

One ``JobManager`` per node. Its ``on_event`` is the chain-event consumer's handler (exactly
once per event id, in the same SQLite transaction as the journal), so it only records and
schedules; the work happens in one asyncio task per job:

1. read the job from the chain (the authority; the Kafka event is only the trigger), and stop
   if it is no longer running there;
2. find its job type, ``check`` it, and run this node's part through the runner, up to
   ``RDX_MAX_ATTEMPTS`` times if a peer is lost (a lost peer has ``RDX_PEER_WAIT_S`` to come
   back; every attempt is a fresh protocol run with fresh secrets);
3. record the outcome, and sign ``jobs.Attest`` with the node key (input commitments: exactly
   this member's inputs as listed; the result hash all participants agreed on; records used); a
   provider holding a release key that can be the job's last to attest sends the key with it, once
   it has read that every other party attested in agreement (one tx locks, releases and settles),
   else publishes it with ``jobs.Release`` once the chain has locked the job (docs/compute.md "Fair exchange");
4. any refusal (dataset missing or not matching its listing's commitment, bad parameters, a
   peer that fails authentication, the deadline) → ``jobs.Fail`` with a reason that names
   things, never values.

The kill switch (JobAborted, MemberSuspended, AssetSuspended, AssetDelisted) ends the journal
entry as aborted and cancels the job's task within the same event-loop turn; cancellation
closes its peer sessions and abandons its worker batches, so the job stops in milliseconds
after the event reaches the node.

Results: a job type hands a result to ``ctx.commit_result`` on whichever participant's node its
protocol gives one (the consumer's; in supply_chain every party's). The lifecycle seals it for
this node's own member only, to the key the chain holds for ``<member>.node``, and stores it
only while the job is active here. Each attempt starts without one (a stored result is always
the attested run's); a failed or aborted job's result is dropped on every node, whatever its role.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter, Histogram

from services.common.chain import ChainClient, ChainError, TxRejected
from services.common.events import Event
from services.common.identity import Identity
from services.common.tx import Code
from services.compute import events as ev
from services.compute import peer, results
from services.compute.chainview import ChainUnavailable, ChainView
from services.compute.datasets import DatasetError, Datasets, Loaded
from services.compute.jobtypes import JOB_TYPES
from services.compute.jobtypes.base import (InputRef, JobContext, JobRefused, JobSpec, JobType, Outcome, PeerLost,
                                            PeerRefused, ProtocolError)
from services.compute.policy import (DEFAULT_MAX_PEER_SET, InputPolicy, Policy, PolicyViolation, budget_of,
                                     check_grants, grant_runs, join_keys)
from services.compute.journal import Journal
from services.compute.release import completes_agreed, key_hash
from services.compute.runner import Runner

log = logging.getLogger("rdx.compute.jobs")

JOBS = Counter("rdx_jobs_total", "jobs this node took part in, by how they ended here", ["type", "outcome"])
JOB_SECONDS = Histogram("rdx_compute_job_duration_seconds", "from start to this node's attestation", ["type"],
                        buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
POLICY_SECONDS = Histogram("rdx_compute_policy_check_seconds", "a provider's own policy check before a job starts "
                           "(its grants and listings re-read from the chain)", ["type"],
                           buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
# A job's way through this node, as marks (epoch seconds, kept in the journal's ``timings``) and the
# phases between them (docs/compute.md "A job's latency by phase"). ``authorized`` is the chain's
# clock: the commit time of the block that authorised the job (its precommits' median time); the
# others are this node's clock when it got there. Each phase is observed once, when its later mark
# is set; one whose marks the clocks put out of order (e.g. a JobSettled applied before this node's
# own read saw the completion) counts as 0.
MARKS = ("authorized", "received", "started", "computed", "attested", "completed", "done", "settled")
PHASES = (("delivery", "authorized", "received"),     # relay, Kafka, the event's proof, the journal
          ("start", "received", "started"),           # the job read from the chain, the policy check
          ("computation", "started", "computed"),     # this node's part of the protocol, loading included
          ("attestation", "computed", "attested"),    # its jobs.Attest committed
          ("completion", "attested", "completed"),    # the others' attestations, the lock, releases, seen here
          ("result", "completed", "done"),            # a held-back result opened and sealed (consumer)
          ("settlement", "completed", "settled"),     # JobSettled (same tx as the completion) applied here
          ("total", "authorized", "done"))            # the authorising block to the job completed here


def breakdown(submitted_at: float, consumer: dict[str, float], nodes: Sequence[dict[str, float]]) -> dict[str, float]:
    """One job's latency as its submitter sees it (the bench and the demo), from the nodes' marks
    (``GET /jobs/{id}``'s ``timings``): ``end_to_end``, the submit (``submitted_at``, the submitter's
    clock) to the result ready on the consumer's node; ``nodes``, the computation's own time: the first
    of ``nodes`` (every participant's marks, the consumer's among them) starting to the last computing;
    ``submission``, the submit to the authorising block's commit; then the consumer's PHASES. Seconds;
    KeyError if a mark is missing."""
    out = {"end_to_end": consumer["done"] - submitted_at,
           "nodes": max(n["computed"] for n in nodes) - min(n["started"] for n in nodes),
           "submission": consumer["authorized"] - submitted_at}
    out.update({phase: max(0.0, consumer[b] - consumer[a]) for phase, a, b in PHASES})
    return out


PHASE_SECONDS = Histogram("rdx_compute_job_phase_seconds", "a job's phases on this node, from the authorising "
                          "block's commit time and this node's clock (lifecycle.PHASES)", ["type", "phase"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
STOP_SECONDS = Histogram("rdx_compute_kill_switch_stop_seconds", "from a kill-switch event reaching the node to "
                         "the job's work having stopped", buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2))


# How often a node asks the chain whether a job it attested is locked (a provider, to release its key)
# or completed (a consumer, to open its result): each answer is proven, so one read that finds the job
# changed in the latest block waits there for the next header. Between reads it sleeps LOCK_POLL_FIRST_S,
# doubling up to LOCK_POLL_S: the change a node waits for usually lands in the next block or two
# (`rdx up` makes one a round of votes after the last, 100 ms when a validator is late), and at most
# ten reads a second per waiting job after that. A chain event about the job (``JobAttested``,
# ``JobLocked``, ``JobReleased``, ``JobCompleted``) cuts the sleep short: it is only a hint, never
# verified and never decided on (the read that follows is), and a flood of them cannot make reads
# more than one per WAKE_GAP_S per waiting job.
LOCK_POLL_FIRST_S, LOCK_POLL_S, WAKE_GAP_S = 0.01, 0.1, 0.01
WAKE_ON = frozenset({ev.JOB_ATTESTED, ev.JOB_LOCKED, ev.JOB_RELEASED, ev.JOB_COMPLETED})
# A peer's node may learn of a job a little after this one (its own proof of the authorising event):
# the dialing side tries again this often, rather than backing off to a second, until RDX_PEER_WAIT_S.
DIAL_RETRY_S = (0.05, 0.25)  # first retry, longest
# A provider's node publishes its release key (with its attestation or in jobs.Release) only while the
# job's deadline is at least this far: a tx's bytes are public in its block even when the chain refuses
# it, and one that lands after the deadline is refused (the job fails, refunded) with the key in view.
# A job that starts this near its deadline could never settle: every node refuses it at once (the
# consumer is refunded), rather than compute what nobody could open or be paid for.
RELEASE_MARGIN_S = 30.0
# How long the provider that sends its key with its attestation (``_key_with_attestation``) waits,
# after its computation, for every other participant's attestation before attesting without it.
KEY_WAIT_S = 5.0
# At most this many of the jobs the chain lists open for this member are checked against the journal
# at a start (``_adopt_open_jobs``): the listing is the chain node's word, and a node cannot make a
# start read without end.
ADOPT_LIMIT = 1000


class _ChainEnded(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


_CHAIN_END = {"completed": "completed", "failed": "failed", "aborted": "aborted"}


def _key_time_left(spec: JobSpec) -> float:
    """Seconds a provider's node still has to publish its release key: negative within the margin."""
    return spec.deadline - RELEASE_MARGIN_S - time.time()


class JobManager:
    def __init__(self, *, member: str, identity: Identity, chain_id: str, chain: ChainClient, view: ChainView,
                 datasets: Datasets, journal: Journal, runner: Runner, hub: peer.SessionHub,
                 publisher: ev.StatusPublisher, peer_wait_s: float = 30.0, max_attempts: int = 3,
                 batch: int = 16_384, max_peer_set: int = DEFAULT_MAX_PEER_SET,
                 job_types: dict[str, type[JobType]] | None = None):
        self.member, self.identity, self.chain_id = member, identity, chain_id
        self.chain, self.view, self.datasets, self.journal = chain, view, datasets, journal
        self.runner, self.hub, self.publisher = runner, hub, publisher
        self.peer_wait_s, self.max_attempts, self.batch = peer_wait_s, max_attempts, batch
        self.max_peer_set = max_peer_set
        self.job_types = JOB_TYPES if job_types is None else job_types  # chain job type -> its protocol
        self.tasks: dict[str, asyncio.Task] = {}
        self._stop_at: dict[str, float] = {}  # job -> monotonic time the kill switch reached us
        self._progress_at: dict[str, tuple[float, str]] = {}
        self._awaiting: set[str] = set()  # consumer jobs whose result needs the providers' released keys
        self._waiting: dict[str, asyncio.Event] = {}  # job -> set by a chain event about it (_locked_or_ended)
        self.node_cache: dict[str, Any] = {}  # what job types reuse across runs (JobContext.node_cache)
        self._background: set[asyncio.Task] = set()  # tasks off a job's path (metrics), kept referenced

    # -- chain events (synchronous: inside the consumer's transaction) --------------------------------
    def acts_on(self, event: Event) -> bool:
        """Whether ``on_event`` would change anything for ``event``: only such events are checked
        against the chain first (one block_results call per height), so a node catching up on the
        topic does not check the many it ignores."""
        d = event.data
        if event.type == ev.JOB_AUTHORIZED:
            return self.member in (d.get("participants") or [])
        if event.type in (ev.JOB_ABORTED, ev.JOB_FAILED, ev.JOB_COMPLETED, ev.JOB_SETTLED):
            return self.journal.get(str(d.get("job", ""))) is not None
        if event.type in (ev.MEMBER_SUSPENDED, ev.ASSET_SUSPENDED, ev.ASSET_DELISTED):
            return bool(self.journal.active())
        return False

    def on_event(self, event: Event, conn) -> None:
        d = event.data
        if event.type in WAKE_ON and (wake := self._waiting.get(str(d.get("job", "")))) is not None:
            wake.set()
        if event.type == ev.JOB_AUTHORIZED:
            self._authorized(d)
        elif event.type == ev.JOB_ABORTED:
            self.stop(d.get("job", ""), "aborted", d.get("reason") or "aborted on chain")
        elif event.type == ev.JOB_FAILED:
            self.stop(d.get("job", ""), "failed", d.get("reason") or "failed on chain")
        elif event.type == ev.JOB_COMPLETED:
            self._completed(d.get("job", ""))
        elif event.type == ev.JOB_SETTLED:
            if self.journal.get(d.get("job", "")) is not None:
                self.journal.update(d["job"], settlement={"charged": d.get("charged"), "refunded": d.get("refunded")})
                self._mark(d["job"], "settled")
        elif event.type == ev.MEMBER_SUSPENDED:
            member = d.get("member")
            for row in self.journal.active():
                if member == self.member or member in row.spec.get("participants", []):
                    self.stop(row.job, "aborted", f"member {member} suspended")
        elif event.type in (ev.ASSET_SUSPENDED, ev.ASSET_DELISTED):
            asset = d.get("asset")
            word = "suspended" if event.type == ev.ASSET_SUSPENDED else "delisted"
            for row in self.journal.active():
                if any(i["asset"] == asset for i in row.spec.get("inputs", [])):
                    self.stop(row.job, "aborted", f"asset {asset} {word}")

    def _authorized(self, d: dict[str, Any]) -> None:
        if self.member not in d.get("participants", []):
            return
        job = d["job"]
        if d.get("deadline", 0) < time.time():
            log.info("job %s was authorised but its deadline has passed; not started", job)
            return
        roles = ["consumer"] if d["consumer"] == self.member else []
        if any(i["provider"] == self.member for i in d.get("inputs", [])):
            roles.append("provider")
        spec = {k: d[k] for k in ("job", "type", "consumer", "inputs", "participants", "params", "max_price",
                                  "deadline") if k in d}
        spec["nodes"] = d.get("nodes") or {}
        if self.journal.add(job, d["type"], "+".join(roles) or "participant", spec, d["deadline"], d.get("height")):
            self._mark(job, "received", self.journal.get(job).received_at)
            log.info("job %s (%s) authorised; this node takes part as %s", job, d["type"], "+".join(roles))
            self.publisher.emit(job, ev.STATUS, type=d["type"], status="accepted", attempt=0)
            asyncio.get_running_loop().call_soon(self.start, job)

    def _completed(self, job: str) -> None:
        row = self.journal.get(job)
        if row is not None and row.active:
            self._mark(job, "completed")
        # The job's task ends it once the released keys opened its result (after a restart too).
        if row is None or job in self._awaiting or self.journal.has_held(job, "pending"):
            return
        if self.journal.end(job, "completed", "completed on chain"):
            self._mark(job, "done")
            JOBS.labels(row.type, "completed").inc()
            self.publisher.emit(job, ev.STATUS, type=row.type, status="completed")
            log.info("job %s completed on chain", job)

    def stop(self, job: str, status: str, reason: str) -> None:
        """The job ended on chain (or must stop here): record it and stop its work now."""
        row = self.journal.get(job)
        if row is None or not self.journal.end(job, status, reason, stop_requested_at=time.time()):
            return
        self.journal.drop_result(job)  # nothing partial, nothing unpaid is released
        JOBS.labels(row.type, status).inc()
        task = self.tasks.get(job)
        if task is not None and not task.done():
            self._stop_at[job] = time.monotonic()
            task.cancel()
            log.warning("job %s %s: %s; stopping its work", job, status, reason)
        else:
            self.publisher.emit(job, ev.STATUS, type=row.type, status=status, reason=reason)
            log.info("job %s %s: %s", job, status, reason)

    # -- the peer channel asks ----------------------------------------------------------------------
    def admit(self, job: str, client_account: str) -> str:
        """May ``client_account`` open a session with us for ``job``? Its member id, or raise."""
        row = self.journal.get(job)
        if row is None:
            raise peer.PeerUnavailable(f"job {job} is not known on this node (yet)")
        if row.status not in ("pending", "running"):
            raise PeerRefused(f"job {job} is {row.status} on this node")
        member = client_account.removesuffix(".node")
        if client_account != f"{member}.node" or member == self.member or member not in row.spec["participants"]:
            raise PeerRefused(f"{client_account} is not a peer of this node in job {job}")
        if not member < self.member:
            raise PeerRefused(f"sessions between {member} and {self.member} are opened by {self.member}")
        return member

    # -- running ------------------------------------------------------------------------------------
    def start(self, job: str) -> None:
        if job in self.tasks and not self.tasks[job].done():
            return
        row = self.journal.get(job)
        if row is None or not row.active:
            return
        task = asyncio.create_task(self._run(job), name=f"job:{job}")
        self.tasks[job] = task
        task.add_done_callback(lambda t, j=job: self.tasks.pop(j, None) if self.tasks.get(j) is t else None)

    def _mark(self, job: str, name: str, at: float | None = None) -> None:
        """``job`` reached ``name`` (one of MARKS) on this node: kept, and each phase it closes observed."""
        row = self.journal.get(job)
        if row is None or name in (row.timings or {}):  # a mark is set once, never moved
            return
        kept = row.timings or {}
        new = {name: time.time() if at is None else at}
        if name == "completed" and "computed" in kept and "attested" not in kept:
            # The job ended on chain, so this node's attestation is there: the chain's event can come
            # before the node's own poll for its tx's commit (ChainClient.wait_for) returns.
            new["attested"] = new[name]
        marks = {**kept, **new}
        self.journal.update(job, timings=marks)
        for phase, first, then in PHASES:
            if (first in new or then in new) and first in marks and then in marks:
                PHASE_SECONDS.labels(row.type, phase).observe(max(0.0, marks[then] - marks[first]))

    async def _mark_authorized(self, job: str, height: int | None) -> None:
        """The authorising block's commit time, read once the job runs (off the job's own path)."""
        row = self.journal.get(job)
        if height is None or row is None or "authorized" in (row.timings or {}):
            return
        at = await self.view.committed_at(height)
        if at is not None:
            self._mark(job, "authorized", at)

    async def _run(self, job: str) -> None:
        row = self.journal.get(job)
        started = time.monotonic()
        if row.authorized_height is not None and "authorized" not in (row.timings or {}):
            marking = asyncio.create_task(self._mark_authorized(job, row.authorized_height))
            self._background.add(marking)
            marking.add_done_callback(self._background.discard)
        spec: JobSpec | None = None
        try:
            spec, record = await self._chain_spec(job, row.deadline, row.spec.get("participants"))
            row = self.journal.get(job)
            done_here = row.status in ("computed", "attested")  # a restart after this node's part was done
            if record["status"] not in ("running", "locked") and not (
                    done_here and record["status"] == "completed" and self.journal.has_held(job, "pending")):
                raise _ChainEnded(_CHAIN_END.get(record["status"], "failed"), record.get("ended_reason") or record["status"])
            if done_here:
                await self._resume_held(spec, record, row)
                return
            cls = self.job_types.get(spec.type)
            if cls is None:
                raise JobRefused(f"this node does not run {spec.type} jobs")
            plugin = cls()
            plugin.check(spec)
            if _key_time_left(spec) <= 0:  # no key could be released: the work would be refunded unseen
                left = max(0, int(spec.deadline - time.time()))
                raise JobRefused(f"the job's deadline is {left} s away, within the {RELEASE_MARGIN_S:.0f} s "
                                 "a provider's release key needs before it, so it could never settle; "
                                 "submit it with a longer timeout_s")
            policy = await self._policy(spec, record)  # before anything is read or sent
            self.journal.update(job, started_at=row.started_at or time.time())
            self._mark(job, "started", self.journal.get(job).started_at)
            outcome = await self._attempts(plugin, spec, row.attempt, policy)
            if not self._set_status(job, "computed", result_hash=outcome.result_hash,
                                    records_used=outcome.records_used, summary=dict(outcome.summary),
                                    computed_at=time.time()):
                return
            self._mark(job, "computed", self.journal.get(job).computed_at)
            self.publisher.emit(job, ev.STATUS, type=spec.type, status="computed", records_used=outcome.records_used,
                                result_hash=outcome.result_hash)
            releases = dict(outcome.releases)
            if outcome.release_key is not None:
                releases[self.member] = hashlib.sha256(outcome.release_key).hexdigest()
            # Kept before the attestation names them (journal.py, 0600): a restart after it can still
            # attest the same, publish the key once locked, and open the result once released.
            self.journal.put_held(job, "attestation", json.dumps({"records": dict(outcome.records),
                                                                  "releases": releases}).encode())
            if outcome.release_key is not None:
                self.journal.put_held(job, "release_key", outcome.release_key)
            if outcome.pending is not None:
                self.journal.put_held(job, "pending", outcome.pending)
            if outcome.pending is not None:
                self._awaiting.add(job)  # its JobCompleted must wait for the result the keys open
            await self._attest(spec, outcome.result_hash, outcome.records_used, outcome.records, releases,
                               key=await self._key_with_attestation(spec, outcome.result_hash, outcome.records_used,
                                                                    outcome.records, releases, outcome.release_key))
            JOB_SECONDS.labels(spec.type).observe(time.monotonic() - started)
            if outcome.release_key is not None:
                await self._release(spec, outcome.release_key)
            if outcome.pending is not None:
                await self._after_release(spec, self._finisher(plugin, spec, row.attempt, policy, outcome.pending))
        except asyncio.CancelledError:
            self._stopped(job)
            raise
        except _ChainEnded as exc:
            if exc.status == "completed":
                self._completed(job)
            else:
                self.stop(job, exc.status, exc.reason)
        except PolicyViolation as exc:  # this node's own policy: the job is aborted on chain
            await self._fail(job, f"{self.member}'s policy: {exc}", tx="jobs.Abort", status="aborted")
        except JobRefused as exc:
            await self._fail(job, str(exc))
        except PeerRefused as exc:
            await self._fail(job, f"peer refused: {exc}")
        except PeerLost as exc:
            await self._fail(job, f"peer lost: {exc}")
        except ProtocolError as exc:
            await self._fail(job, f"protocol error: {exc}")
        except asyncio.TimeoutError:
            await self._fail(job, "the job's deadline passed on this node")
        except Exception as exc:  # noqa: BLE001 - the message may quote data: only the type is kept
            log.error("job %s failed with an internal error %s", job, type(exc).__name__)
            await self._fail(job, f"internal error on {self.member}'s node ({type(exc).__name__})")
        finally:
            self._awaiting.discard(job)
            await self.hub.drop(job)
            self._progress_at.pop(job, None)

    async def _resume_held(self, spec: JobSpec, record: dict, row) -> None:
        """A restart after this node's part was done: attest as it would have (the kept record
        counts and release hashes), publish its release key once the job is locked, and open a
        held-back result once the keys are on chain (from the ``pending`` bytes it kept)."""
        kept = json.loads(self.journal.held(spec.job, "attestation") or b"{}")
        key, pending = self.journal.held(spec.job, "release_key"), self.journal.held(spec.job, "pending")
        if self.member not in record.get("attestations", {}):
            records, releases = kept.get("records"), kept.get("releases")
            await self._attest(spec, row.result_hash, row.records_used or 0, records, releases,
                               key=await self._key_with_attestation(spec, row.result_hash, row.records_used or 0,
                                                                    records, releases, key))
        if key is not None:
            await self._release(spec, key)
        cls = self.job_types.get(spec.type)
        if pending is not None and cls is not None:
            self._awaiting.add(spec.job)
            await self._after_release(spec, self._finisher(cls(), spec, row.attempt, None, pending))

    def _finisher(self, plugin: JobType, spec: JobSpec, attempt: int, policy: Policy | None, pending: bytes):
        async def finish(keys) -> None:
            await plugin.finish(self._context(spec, attempt, [], policy), pending, keys)
        return finish

    def _stopped(self, job: str) -> None:
        """The task was cancelled: by the kill switch (the journal already says how it ended) or by shutdown."""
        reached = self._stop_at.pop(job, None)
        row = self.journal.get(job)
        if reached is None or row is None:
            log.info("job %s interrupted (node stopping); a restart resumes or fails it", job)
            return
        stopped_ms = (time.monotonic() - reached) * 1000
        STOP_SECONDS.observe(stopped_ms / 1000)
        self.journal.update(job, stopped_ms=stopped_ms)
        self.publisher.emit(job, ev.STATUS, type=row.type, status=row.status, reason=row.reason,
                            stopped_ms=round(stopped_ms, 3))
        log.warning("job %s stopped %.1f ms after the kill switch reached this node", job, stopped_ms)

    async def _chain_spec(self, job: str, deadline: int, participants=None) -> tuple[JobSpec, dict]:
        """``participants``: the journal's, from the proven event (only a hint; the record decides)."""
        hint = [p for p in participants if isinstance(p, str)] if isinstance(participants, list) else []
        got = await self._chain_read(deadline, self.view.spec, job, hint)
        if got is None:
            raise _ChainEnded("failed", "the job is not on chain")
        return got

    async def _policy(self, spec: JobSpec, record: dict) -> Policy:
        """This node's limits for the job; for each of its own inputs, the grant and the listing
        version re-read from the chain and checked (PolicyViolation if the job breaks them)."""
        mine = spec.inputs_of(self.member)
        inputs: dict[str, InputPolicy] = {}
        began = time.monotonic()
        if mine:
            own = [raw for raw in record.get("inputs") or [] if raw.get("provider") == self.member]
            # Every grant and listing read at once: one round trip to the chain, not two an input.
            read_grants, read_listings = await asyncio.gather(
                asyncio.gather(*(self._chain_read(spec.deadline, self.view.grant, raw.get("grant")) for raw in own)),
                asyncio.gather(*(self._chain_read(spec.deadline, self.view.listing, raw["asset"], raw["version"])
                                 for raw in own)))
            grants = dict(zip((raw.get("grant") for raw in own), read_grants))
            listings = dict(zip((raw["asset"] for raw in own), read_listings))
            check_grants(spec, record, self.member, grants, listings)
            for ref in mine:
                listing = listings.get(ref.asset) or {}
                inputs[ref.asset] = InputPolicy(ref.asset, max(ref.min_group_size, int(listing.get("min_group_size", 1))),
                                                join_keys(listing.get("metadata")), self._dataset_key(ref.asset),
                                                budget_of(listing), grant_runs(record, grants, ref.asset))
            POLICY_SECONDS.labels(spec.type).observe(time.monotonic() - began)
        return Policy(self.max_peer_set, inputs)

    async def _chain_read(self, deadline: int, read, *args):
        """``read(*args)`` from the chain, retried while the chain is unreachable, until the deadline."""
        delay = 0.2
        while True:
            try:
                return await read(*args)
            except ChainUnavailable:
                if time.time() > deadline:
                    raise _ChainEnded("failed", "the chain could not be reached before the deadline") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _attempts(self, plugin, spec: JobSpec, done_attempts: int, policy: Policy | None = None) -> Outcome:
        attempt = done_attempts
        while True:
            attempt += 1
            self._set_status(spec.job, "running", attempt=attempt)
            self.journal.drop_result(spec.job)  # a stored result is always the attested run's
            self.publisher.emit(spec.job, ev.STATUS, type=spec.type, status="running", attempt=attempt)
            channels: list[peer.SecureChannel] = []
            ctx = self._context(spec, attempt, channels, policy)
            try:
                remaining = max(spec.deadline - time.time(), 0.1)
                return await asyncio.wait_for(self.runner.run(plugin, ctx), remaining)
            except PeerLost as exc:
                if attempt >= self.max_attempts:
                    raise
                record = await self._chain_record(spec.job)
                if record is not None and record["status"] != "running":
                    raise _ChainEnded(_CHAIN_END.get(record["status"], "failed"), record.get("ended_reason") or "") from None
                log.warning("job %s attempt %d lost its peer (%s); running it again", spec.job, attempt, exc)
                self.publisher.emit(spec.job, ev.STATUS, type=spec.type, status="retrying", attempt=attempt,
                                    reason=str(exc)[:300])
            finally:
                for chan in channels:
                    await chan.close()

    async def _chain_record(self, job: str) -> dict | None:
        try:
            return await self.view.job(job)
        except ChainUnavailable:
            return None

    def _set_status(self, job: str, status: str, **fields: Any) -> bool:
        """Move an active job on; never revive one that ended meanwhile."""
        row = self.journal.get(job)
        if row is None or not row.active:
            return False
        self.journal.update(job, status=status, **fields)
        return True

    # -- what a job type gets -------------------------------------------------------------------------
    def _context(self, spec: JobSpec, attempt: int, channels: list, policy: Policy | None = None) -> JobContext:
        opened = time.monotonic()

        async def channel(other: str):
            if other == self.member or other not in spec.participants:
                raise JobRefused(f"{other} does not take part in job {spec.job}")
            wait_until = opened + self.peer_wait_s
            if self.member < other:
                chan = await self._dial(spec, other, wait_until)
            else:
                chan = await self.hub.take(spec.job, other, max(wait_until - time.monotonic(), 0.1))
            channels.append(chan)
            return chan

        async def commit_result(result: bytes) -> str:
            return await self._commit_result(spec, result)

        return JobContext(
            spec, self.member, attempt=attempt, channel=channel,
            load_input=lambda ref, cols: self._load_input(spec, ref, cols),
            load_local=self._load_local, dataset_key=self._dataset_key, commit_result=commit_result,
            progress=lambda phase, done, total: self._progress(spec, phase, done, total),
            compute=self.runner.compute, workers=self.runner.workers, batch=self.batch, log=log,
            policy=policy or Policy(self.max_peer_set), node_cache=self.node_cache)

    async def _dial(self, spec: JobSpec, other: str, wait_until: float) -> peer.SecureChannel:
        node = spec.nodes.get(other)
        if node is None:
            raise JobRefused(f"{other} has no compute node on chain")
        delay = DIAL_RETRY_S[0]
        while True:
            try:
                return await peer.connect(self.identity, self.chain_id, self.view, spec.job, other, node)
            except peer.PeerUnavailable as exc:
                if time.monotonic() + delay > wait_until:
                    raise PeerLost(f"{other}'s node was unreachable for {self.peer_wait_s:.0f}s ({exc})") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, DIAL_RETRY_S[1])

    async def _load_input(self, spec: JobSpec, ref: InputRef, columns: Sequence[str]) -> Loaded:
        if ref.provider != self.member or ref not in spec.inputs:
            raise JobRefused(f"{ref.asset} is not an input of {self.member} in this job")
        dataset = self.datasets.for_asset(ref.asset)
        if dataset is None:
            raise JobRefused(f"{self.member}'s node has no dataset bound to asset {ref.asset}")
        try:
            loaded = await asyncio.to_thread(dataset.load, list(columns))
        except DatasetError as exc:
            raise JobRefused(str(exc)) from None
        if loaded.commitment != ref.commitment:
            log.error("dataset %s does not match the listed commitment of %s v%d; refusing job %s",
                      dataset.id, ref.asset, ref.version, spec.job)
            raise JobRefused(f"dataset for {ref.asset} does not match the commitment of its listing (v{ref.version})")
        return loaded

    async def _load_local(self, dataset_id: str, columns: Sequence[str]) -> Loaded:
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise JobRefused(f"{self.member}'s node has no dataset {dataset_id}")
        try:
            return await asyncio.to_thread(dataset.load, list(columns))
        except DatasetError as exc:
            raise JobRefused(str(exc)) from None

    def _dataset_key(self, name: str) -> str | None:
        dataset = self.datasets.for_asset(name) or self.datasets.get(name)
        return dataset.config.key if dataset else None

    async def _commit_result(self, spec: JobSpec, result: bytes) -> str:
        """Seal ``result`` for this node's own member and store it; there is no other recipient:
        a node holds only results its own member can open."""
        if self.member not in spec.participants:
            raise ProtocolError(f"{self.member} does not take part in job {spec.job}")
        try:
            account = await self.view.account(f"{self.member}.node")
        except ChainUnavailable:
            account = None
        key = account["public_key"] if account else self.identity.public_key  # the same key once registered
        commitment, salt = results.commit(result)
        envelope = results.seal(key, spec.job, spec.type, result, salt, commitment, member=self.member)
        if not self.journal.put_result(spec.job, envelope):
            raise JobRefused(f"job {spec.job} ended on {self.member}'s node before its result was stored")
        return commitment

    def _progress(self, spec: JobSpec, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        last = self._progress_at.get(spec.job)
        if last is not None and last[1] == phase and now - last[0] < 1.0 and done != total:
            return
        self._progress_at[spec.job] = (now, phase)
        self.journal.update(spec.job, progress={"phase": phase, "done": done, "total": total})
        self.publisher.emit(spec.job, ev.PROGRESS, type=spec.type, phase=phase, done=done, total=total)
        log.info("job %s %s %d/%d", spec.job, phase, done, total)

    # -- talking to the chain -------------------------------------------------------------------------
    async def _attest(self, spec: JobSpec, result_hash: str, records_used: int, records=None, releases=None,
                      key: bytes | None = None) -> None:
        """``jobs.Attest``; with ``key`` (``_key_with_attestation`` said so) the provider's release key
        goes with it, and that one tx locks, releases and settles the job."""
        payload = {"job": spec.job, "result_hash": result_hash, "records_used": int(records_used),
                   "input_commitments": {i.asset: i.commitment for i in spec.inputs_of(self.member)}}
        if records:
            payload["records"] = {asset: int(n) for asset, n in records.items()}
        if releases:
            payload["releases"] = dict(releases)
        if key is not None:
            payload["key"] = key.hex()
        delay = 0.2
        while True:
            if "key" in payload and _key_time_left(spec) < 0:
                del payload["key"]  # too near the deadline now: the key waits for the lock (and its margin)
            try:
                await self.chain.submit(self.identity, "jobs.Attest", payload, timeout=20)
                break
            except TxRejected as exc:
                if exc.code == Code.CONFLICT:  # already attested (a restart after the tx went through)
                    break
                if "key" in payload and exc.code != Code.BAD_NONCE:
                    # Not expected after the checks of _key_with_attestation: attest without it; a job
                    # that ended meanwhile refuses that too (below), and one that locks gets the key later.
                    log.warning("job %s: the chain refused %s's attestation with its key (code %s); attesting "
                                "without it", spec.job, self.member, exc.code)
                    del payload["key"]
                    continue
                if exc.code == Code.INVALID_STATE:
                    return  # the job ended meanwhile; its event says how
                if exc.code != Code.BAD_NONCE or time.time() >= spec.deadline:
                    raise JobRefused(f"the chain refused this node's attestation (code {exc.code})") from None
                # The client has already signed once more with the chain's own nonce (ChainClient.submit):
                # a node refusing that too is at fault or racing another signer; ask again, paced.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except ChainError:
                if time.time() > spec.deadline:
                    raise JobRefused("the chain could not be reached to attest before the deadline") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._mark(spec.job, "attested")
        if self._set_status(spec.job, "attested"):
            self.publisher.emit(spec.job, ev.STATUS, type=spec.type, status="attested", result_hash=result_hash,
                                records_used=records_used)
            log.info("job %s attested (records used %d)", spec.job, records_used)

    async def _locked_or_ended(self, spec: JobSpec, ready) -> dict | None:
        """Polls the chain's record of the job until ``ready(record)`` (then returns it) or the job
        ended otherwise (None: its event, or this call, ends it here)."""
        wake = self._waiting.setdefault(spec.job, asyncio.Event())
        try:
            return await self._poll_job(spec, ready, wake)
        finally:
            if self._waiting.get(spec.job) is wake:
                del self._waiting[spec.job]

    async def _poll_job(self, spec: JobSpec, ready, wake: asyncio.Event) -> dict | None:
        pause = LOCK_POLL_FIRST_S
        while True:
            wake.clear()  # an event from here on is news to the read below or to the next one
            record = await self._chain_read(spec.deadline + 30, self.view.job, spec.job)
            if record is not None and record["status"] == "completed":
                self._mark(spec.job, "completed")
            if record is not None and ready(record):
                return record
            if record is None or record["status"] not in ("running", "locked"):
                self._awaiting.discard(spec.job)
                if record is not None and record["status"] == "completed":
                    self._completed(spec.job)
                elif record is not None:
                    self.stop(spec.job, _CHAIN_END.get(record["status"], "failed"), record.get("ended_reason") or "")
                return None
            began = time.monotonic()
            try:
                await asyncio.wait_for(wake.wait(), pause)
                await asyncio.sleep(max(0.0, WAKE_GAP_S - (time.monotonic() - began)))
                pause = LOCK_POLL_FIRST_S  # the job moved: the next change is near
            except asyncio.TimeoutError:
                pause = min(pause * 2, LOCK_POLL_S)

    async def _key_with_attestation(self, spec: JobSpec, result_hash: str, records_used: int, records, releases,
                                    key: bytes | None) -> bytes | None:
        """``key`` if this provider's node should send it with its attestation (the 3-tx settlement):
        it is the job's designated last attester (its greatest provider other than the consumer, so
        that in a job of several providers one waits and the others attest at once), every other
        participant has attested within KEY_WAIT_S (proven reads), their attestations and this one
        agree as the chain requires for the lock (``release.completes_agreed``) and the deadline is
        not within RELEASE_MARGIN_S. Else None: it attests without it and publishes the key once the
        chain has locked the job (``_release``); on any disagreement the job fails, no key public."""
        providers = [p for p in spec.providers if p != spec.consumer]
        if key is None or not providers or self.member != providers[-1] or not releases or \
                _key_time_left(spec) < KEY_WAIT_S:
            return None
        others = set(spec.participants) - {self.member}
        try:
            record = await asyncio.wait_for(self._locked_or_ended(
                spec, lambda r: others <= set(r.get("attestations") or {})), KEY_WAIT_S)
        except asyncio.TimeoutError:
            log.info("job %s: not every other party attested within %.0f s; %s attests without its key",
                     spec.job, KEY_WAIT_S, self.member)
            return None
        mine = {"result_hash": result_hash, "records_used": int(records_used),
                "records": {a: int(n) for a, n in (records or {}).items()}, "releases": dict(releases)}
        if record is None or not completes_agreed(record, self.member, mine) or \
                releases.get(self.member) != key_hash(key) or _key_time_left(spec) < 0:
            if record is not None:
                log.warning("job %s: the others' attestations do not agree with %s's; it attests without its key",
                            spec.job, self.member)
            return None
        return key

    async def _release(self, spec: JobSpec, key: bytes) -> None:
        """A provider's held-back key, published only once the chain has locked the job: every party
        attested the same result and records, and the escrow can now only settle to the providers.
        Not within RELEASE_MARGIN_S of the deadline: the job is then refunded at its deadline."""
        record = await self._locked_or_ended(spec, lambda r: r["status"] == "locked")
        if record is None or self.member in (record.get("releases") or {}):
            return
        while True:
            if _key_time_left(spec) < 0:
                log.warning("job %s: locked within %.0f s of its deadline; %s keeps its key (the consumer is "
                            "refunded at the deadline)", spec.job, RELEASE_MARGIN_S, self.member)
                return
            try:
                await self.chain.submit(self.identity, "jobs.Release", {"job": spec.job, "key": key.hex()}, timeout=20)
                log.info("job %s locked on chain; %s's release key published", spec.job, self.member)
                return
            except TxRejected as exc:
                if exc.code == Code.BAD_NONCE and time.time() < spec.deadline:
                    await asyncio.sleep(1.0)  # paced, as an attestation's (_attest)
                    continue
                log.warning("job %s: the chain refused %s's release (code %s)", spec.job, self.member, exc.code)
                return
            except ChainError:
                if time.time() > spec.deadline:
                    return
                await asyncio.sleep(1.0)

    async def _after_release(self, spec: JobSpec, finish) -> None:
        """The consumer's side: once every key is on chain (the job completed and settled in that
        tx), open the held-back messages and seal the result; then the job is completed here."""
        record = await self._locked_or_ended(spec, lambda r: r["status"] == "completed")
        if record is None:
            return
        keys = {m: bytes.fromhex(k) for m, k in (record.get("releases") or {}).items()}
        try:
            await finish(keys)
        except (JobRefused, ProtocolError, ValueError) as exc:
            log.error("job %s: the released keys did not open a result (%s)", spec.job, type(exc).__name__)
            self.publisher.emit(spec.job, ev.STATUS, type=spec.type, status="release_unopened",
                                reason=str(exc)[:300])
        self._awaiting.discard(spec.job)
        self.journal.drop_held(spec.job, "pending")
        self._completed(spec.job)

    async def _fail(self, job: str, reason: str, *, tx: str = "jobs.Fail", status: str = "failed") -> None:
        record = await self._chain_record(job)
        if record is not None and record["status"] != "running":  # a peer ended it first: mirror the chain
            if record["status"] == "completed":
                self._completed(job)
            else:
                self.stop(job, _CHAIN_END.get(record["status"], "failed"), record.get("ended_reason") or reason)
            return
        row = self.journal.get(job)
        if row is None or not self.journal.end(job, status, reason[:500]):
            return
        self.journal.drop_result(job)
        JOBS.labels(row.type, status).inc()
        self.publisher.emit(job, ev.STATUS, type=row.type, status=status, reason=reason[:500])
        log.warning("job %s %s here: %s", job, status, reason)
        for _ in range(5):
            try:
                await self.chain.submit(self.identity, tx, {"job": job, "reason": reason[:500]}, timeout=20)
                return
            except TxRejected as exc:  # it had ended there meanwhile, as a rule
                log.info("job %s: the chain refused its %s (code %d: %s)", job, tx, exc.code, exc.log[:200])
                return
            except ChainError:
                await asyncio.sleep(1.0)
        log.error("could not report job %s as failed to the chain; its deadline will end it", job)

    # -- restart and shutdown -------------------------------------------------------------------------
    async def recover(self) -> None:
        """Every job the journal left unfinished: end it as the chain did, or run it again."""
        for row in self.journal.active():
            record = None
            for _ in range(30):
                try:
                    record = await self.view.job(row.job)
                    break
                except ChainUnavailable:
                    await asyncio.sleep(1.0)
            else:
                log.error("chain unreachable: job %s stays journaled as %s until a later start", row.job, row.status)
                continue
            row = self.journal.get(row.job)
            if not row.active:
                continue
            if record is None:
                self.stop(row.job, "failed", "the job is not on chain")
            elif record["status"] == "completed" and not self.journal.has_held(row.job, "pending"):
                self._completed(row.job)
            elif record["status"] not in ("running", "locked", "completed"):
                self.stop(row.job, _CHAIN_END.get(record["status"], "failed"), record.get("ended_reason") or "ended on chain")
            else:  # running, locked (a key to release, a result to open), or completed with a result to open
                log.info("job %s was %s when this node stopped; resuming it", row.job, row.status)
                self.start(row.job)
        await self._adopt_open_jobs()

    async def _adopt_open_jobs(self) -> None:
        """Jobs running on chain with this member that the journal does not hold: a state restored
        from a backup lacks those authorised after it, and the node's consumer group has read past
        their JobAuthorized, so no event would bring them. Each is journaled from the chain's record
        (read proven) and run, as its event would have done. One this member already attested is
        left alone: what its attestation named (a release key, a held-back result) went with the
        lost state, and the chain refunds the job at its deadline. A job whose event is still to
        come is journaled once: the event finds it there."""
        try:
            listed = await self._chain_read(int(time.time()) + 30, self.view.open_jobs, self.member, ADOPT_LIMIT)
        except _ChainEnded:
            log.error("chain unreachable: this node's open jobs on chain were not checked against its journal")
            return
        for job in listed:
            if self.journal.get(job) is not None:
                continue
            record = await self._chain_record(job)  # None also when not proven now: its deadline refunds it
            if record is None or record.get("status") != "running" or self.member not in record.get("participants", []):
                continue
            if self.member in (record.get("attestations") or {}):
                log.warning("job %s: %s attested it, but this node's journal does not hold it (a restored state?); "
                            "it is not run again and ends at its deadline", job, self.member)
                continue
            log.warning("job %s is running on chain but was not in this node's journal (a restored state?); "
                        "taking it up from the chain's record", job)
            self._authorized({"job": job, "type": record["type"], "consumer": record["consumer"],
                              "inputs": record["inputs"], "participants": record["participants"],
                              "params": record.get("params") or {}, "max_price": record["max_price"],
                              "deadline": record["deadline"], "height": record.get("submitted_height")})

    async def shutdown(self) -> None:
        """Stop every running job's work; the journal keeps them for the next start."""
        tasks = [t for t in [*self.tasks.values(), *self._background] if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
