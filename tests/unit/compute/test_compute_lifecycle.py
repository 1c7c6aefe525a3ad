"""The job lifecycle without servers (a unit test): a chain double that records what the lifecycle
submits, a real journal, and a job type plugged in the
way issue 7's will be, to show the lifecycle needs nothing from a protocol but the interface."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time

import pytest

from services.common.events import Event
from services.common.identity import Identity
from services.common.tx import Code
from services.common.chain import TxRejected
from services.compute import jobtypes, lifecycle, peer, results
from services.compute.jobtypes.base import JobContext, JobRefused, JobType, Outcome, PeerLost, PeerRefused
from services.compute.journal import Journal
from services.compute.lifecycle import JobManager
from services.compute.chainview import ChainUnavailable, ChainView
from services.compute.datasets import Datasets

ME, OTHER = "telco", "bank"
AUTHORISED_AT = time.time() - 0.5


class RecordingChain:
    def __init__(self):
        self.txs: list[tuple[str, str, dict]] = []
        self.reject: dict[str, int] = {}

    async def submit(self, identity, type_, payload, **_):
        self.txs.append((identity.account, type_, payload))
        if type_ in self.reject:
            raise TxRejected(self.reject[type_], "no", "ab" * 32)


class FakeView(ChainView):
    def __init__(self, record):
        self.record = record

    async def job(self, job):
        return self.record if self.record and self.record["id"] == job else None

    async def open_jobs(self, member, limit=1000):  # the chain node's listing: what a test says it lists
        listed = getattr(self, "listed", None)
        if listed is not None:
            return listed
        rec = self.record
        return [rec["id"]] if rec and rec["status"] in ("running", "locked") and member in rec["participants"] else []

    async def spec(self, job, participants=()):
        from services.compute.chainview import ChainView as Real

        class Q:
            chain_id = "rdx-test"  # the chain view asks it which trust anchor applies (none here)

            def __init__(s, rec):
                s.rec = rec

            async def query(s, path):
                if path.startswith("/jobs/"):
                    return s.rec
                if path.startswith("/members/"):
                    m = path.rsplit("/", 1)[1]
                    return {"status": "active", "node": {"account": f"{m}.node", "endpoint": "127.0.0.1:1"}}
                return None
        return await Real(Q(self.record)).spec(job, participants)

    async def account(self, account):
        return None

    async def committed_at(self, height):  # the authorising block's commit time (its precommits' median)
        return AUTHORISED_AT

    async def grant(self, grant):  # the provider re-reads its grant and listing before it runs
        rec = self.record or {}
        return {"id": grant, "asset": "telco.subs", "provider": ME, "consumer": rec.get("consumer"),
                "status": "granted", "operations": [rec.get("type")], "expires_at": 2**40, "max_runs": 5,
                "runs_used": 1}

    async def listing(self, asset, version):
        return {"id": asset, "version": version, "operations": [(self.record or {}).get("type")],
                "min_group_size": 1, "metadata": {"columns": []}}


class RecordingPublisher:
    def __init__(self):
        self.events: list[tuple[str, str, dict]] = []

    def emit(self, job, type_, **data):
        self.events.append((job, type_, data))


class ThreadRunner:
    name, workers = "thread", 1

    async def run(self, job_type, ctx):
        return await job_type.run(ctx)

    async def compute(self, fn, *args):
        return await asyncio.to_thread(fn, *args)


def record(job="j-1", type_="echo", consumer=OTHER, provider=ME, status="running"):
    return {"id": job, "type": type_, "consumer": consumer, "participants": sorted({consumer, provider}),
            "inputs": [{"asset": "telco.subs", "grant": "g-1", "provider": provider, "version": 1,
                        "commitment": "ab" * 32, "min_group_size": 1}],
            "params": {}, "max_price": 10, "deadline": 2**40, "status": status, "attestations": {}}


def authorized(rec, height=5):
    data = {k: rec[k] for k in ("consumer", "inputs", "participants", "params", "max_price", "deadline", "type")}
    data.update(job=rec["id"], nodes={m: {"account": f"{m}.node", "endpoint": "x"} for m in rec["participants"]},
                height=height)
    return Event(id=f"{height}/0/0", type="JobAuthorized", entity=f"job:{rec['id']}", source="consensus", data=data)


def manager(rec, member=ME):
    conn = sqlite3.connect(":memory:", isolation_level=None)
    chain, pub = RecordingChain(), RecordingPublisher()
    m = JobManager(member=member, identity=Identity.generate(f"{member}.node"), chain_id="c", chain=chain,
                   view=FakeView(rec), datasets=Datasets(), journal=Journal(conn), runner=ThreadRunner(),
                   hub=peer.SessionHub(), publisher=pub, peer_wait_s=0.2, max_attempts=2)
    return m, chain, pub


class Echo(JobType):
    """A toy job type: the provider attests a hash, without any peer. Stands for issue 7's types."""

    name = "echo"
    gate: asyncio.Event | None = None
    behaviour = "ok"

    async def run(self, ctx: JobContext) -> Outcome:
        ctx.progress("working", 1, 2)
        if Echo.gate is not None:
            await Echo.gate.wait()
        if Echo.behaviour == "refuse":
            raise JobRefused("the dataset for telco.subs does not match the commitment of its listing (v1)")
        if Echo.behaviour == "lose":
            raise PeerLost("bank's node went away")
        if Echo.behaviour == "boom":
            raise ValueError("a message that quotes a SECRET value")
        return Outcome(hashlib.sha256(ctx.spec.job.encode()).hexdigest(), records_used=42)


@pytest.fixture(autouse=True)
def echo_type():
    jobtypes.JOB_TYPES["echo"] = Echo
    Echo.gate, Echo.behaviour = None, "ok"
    yield
    jobtypes.JOB_TYPES.pop("echo")


async def _settle(m: JobManager):
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not any(not t.done() for t in m.tasks.values()):
            return


async def _run_authorised():
    """A manager given one authorised job (run as its provider), once the job has settled."""
    rec = record()
    m, chain, pub = manager(rec)
    m.on_event(authorized(rec), None)
    await _settle(m)
    return m, chain, pub


async def test_an_authorised_job_is_journaled_run_and_attested_with_exactly_its_own_inputs():
    rec = record()
    m, chain, pub = manager(rec)
    m.on_event(authorized(rec), None)
    assert m.journal.get("j-1").status == "pending"
    await _settle(m)
    row = m.journal.get("j-1")
    assert row.status == "attested" and row.records_used == 42 and row.role == "provider"
    [(signer, type_, payload)] = chain.txs
    assert (signer, type_) == ("telco.node", "jobs.Attest")
    assert payload == {"job": "j-1", "result_hash": hashlib.sha256(b"j-1").hexdigest(), "records_used": 42,
                       "input_commitments": {"telco.subs": "ab" * 32}}
    statuses = [d.get("status") for _, t, d in pub.events if t == "JobStatus"]
    assert statuses == ["accepted", "running", "computed", "attested"]
    m.on_event(Event(id="9/0/0", type="JobCompleted", entity="job:j-1", source="consensus", data={"job": "j-1"}), None)
    assert m.journal.get("j-1").status == "completed"


def _phase_counts(job_type: str) -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {phase: REGISTRY.get_sample_value("rdx_compute_job_phase_seconds_count",
                                             {"type": job_type, "phase": phase}) or 0.0
            for phase, _, _ in lifecycle.PHASES}


async def test_a_job_s_marks_are_kept_in_order_and_each_phase_is_observed_once():
    before = _phase_counts("echo")
    rec = record()
    m, chain, pub = manager(rec)
    m.on_event(authorized(rec), None)
    await _settle(m)
    for event in ("JobCompleted", "JobSettled"):
        m.on_event(Event(id=f"9/0/{event}", type=event, entity="job:j-1", source="consensus",
                         data={"job": "j-1", "charged": 10, "refunded": 0}), None)
    m.on_event(Event(id="9/0/again", type="JobSettled", entity="job:j-1", source="consensus",
                     data={"job": "j-1", "charged": 10, "refunded": 0}), None)  # a mark is set once
    timings = m.journal.get("j-1").timings
    assert set(timings) == set(lifecycle.MARKS) and timings["authorized"] == AUTHORISED_AT
    assert all(timings[a] <= timings[b] for a, b in zip(lifecycle.MARKS, lifecycle.MARKS[1:]))  # in this order
    assert m.journal.get("j-1").public()["timings"] == timings
    after = _phase_counts("echo")
    assert {p: after[p] - before[p] for p in after} == {p: 1.0 for p, _, _ in lifecycle.PHASES}


async def test_the_chain_s_completion_seen_before_the_node_s_own_poll_for_its_attestation_marks_it_attested_then():
    """The provider's attestation that carries its key completes the job in its block: the chain's
    JobCompleted can reach the node before ChainClient.wait_for sees that tx committed. The job's
    completion says its attestation is on chain, so the marks stay in order and each phase is
    observed once (test_job_latency.py saw 'attested' after 'completed' about one run in ten)."""
    before = _phase_counts("echo")
    rec = record()
    m, chain, _ = manager(rec)
    committed = asyncio.Event()
    submit = chain.submit

    async def slow_submit(identity, type_, payload, **kw):
        await submit(identity, type_, payload, **kw)
        if type_ == "jobs.Attest":
            await committed.wait()  # the poll for the commit has not returned yet
    chain.submit = slow_submit
    m.on_event(authorized(rec), None)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if any(t == "jobs.Attest" for _, t, _ in chain.txs):
            break
    m.on_event(Event(id="9/0/0", type="JobCompleted", entity="job:j-1", source="consensus", data={"job": "j-1"}), None)
    committed.set()
    await _settle(m)
    timings = m.journal.get("j-1").timings
    assert timings["attested"] == timings["completed"]
    marks = [k for k in lifecycle.MARKS if k in timings]
    assert all(timings[a] <= timings[b] for a, b in zip(marks, marks[1:]))
    after = _phase_counts("echo")
    assert after["attestation"] - before["attestation"] == 1.0 and after["completion"] - before["completion"] == 1.0


async def test_jobs_of_others_and_duplicates_are_ignored():
    rec = record(consumer="x", provider="y")
    m, chain, _ = manager(rec)
    m.on_event(authorized(rec), None)
    assert m.journal.get("j-1") is None
    rec2 = record()
    m2, _, pub = manager(rec2)
    m2.on_event(authorized(rec2), None)
    m2.on_event(authorized(rec2, height=6), None)  # the same job again (another event id)
    assert sum(1 for _, t, d in pub.events if d.get("status") == "accepted") == 1
    await _settle(m2)


@pytest.mark.parametrize("event", [
    ("JobAborted", {"job": "j-1", "reason": "by the association"}),
    ("MemberSuspended", {"member": OTHER, "reason": "audit"}),
    ("AssetSuspended", {"asset": "telco.subs", "reason": "audit"}),
    ("AssetDelisted", {"asset": "telco.subs", "reason": "retired"}),
])
async def test_the_kill_switch_stops_a_running_job_at_once(event):
    rec = record()
    m, chain, pub = manager(rec)
    Echo.gate = asyncio.Event()  # the job waits forever unless stopped
    m.on_event(authorized(rec), None)
    for _ in range(500):  # until it runs (a fixed 50 ms was too short on a busy CI machine once)
        if m.journal.get("j-1").status != "pending":
            break
        await asyncio.sleep(0.01)
    assert m.journal.get("j-1").status == "running"
    m.on_event(Event(id="7/0/0", type=event[0], entity="x", source="consensus", data=event[1]), None)
    await _settle(m)
    row = m.journal.get("j-1")
    assert row.status == "aborted" and row.stopped_ms is not None and row.stopped_ms < 100
    assert not chain.txs  # no attestation, no Fail: the chain already ended it
    assert any(d.get("status") == "aborted" and "stopped_ms" in d for _, _, d in pub.events)


async def test_a_refusal_fails_the_job_on_chain_with_its_reason():
    Echo.behaviour = "refuse"
    m, chain, _ = await _run_authorised()
    assert m.journal.get("j-1").status == "failed"
    [(_, type_, payload)] = chain.txs
    assert type_ == "jobs.Fail" and "does not match the commitment" in payload["reason"]


async def test_an_internal_error_fails_the_job_without_quoting_its_message():
    Echo.behaviour = "boom"
    m, chain, _ = await _run_authorised()
    [(_, _, payload)] = chain.txs
    assert payload["reason"] == "internal error on telco's node (ValueError)"
    assert "SECRET" not in m.journal.get("j-1").reason


async def test_a_lost_peer_is_retried_then_fails():
    Echo.behaviour = "lose"
    m, chain, pub = await _run_authorised()
    row = m.journal.get("j-1")
    assert row.status == "failed" and row.attempt == 2 and "peer lost" in row.reason
    assert [d.get("status") for _, t, d in pub.events if t == "JobStatus"].count("retrying") == 1


async def test_a_chain_node_refusing_every_nonce_gets_paced_attestations_then_the_job_fails_at_its_deadline(monkeypatch):
    """A hostile (or confused) RPC node that answers bad nonce to every tx, even after the client
    signed once more with the chain's own nonce: the node asks again with a growing pause, never in
    a loop, and fails the job once its deadline has passed."""
    monkeypatch.setattr(lifecycle, "RELEASE_MARGIN_S", 0.0)  # a deadline this near is refused at the start
    rec = record() | {"deadline": time.time() + 1.2}
    m, chain, _ = manager(rec)
    chain.reject["jobs.Attest"] = Code.BAD_NONCE
    m.on_event(authorized(rec), None)
    await asyncio.sleep(2.0)
    await _settle(m)
    kinds = [t for _, t, _ in chain.txs]
    assert 2 <= kinds.count("jobs.Attest") <= 5, kinds.count("jobs.Attest")  # 0.2, 0.4, 0.8 s apart
    assert kinds[-1] == "jobs.Fail" and m.journal.get("j-1").status == "failed"


async def test_a_restart_resumes_pending_work_and_mirrors_jobs_that_ended_on_chain():
    rec = record()
    m, chain, _ = manager(rec)
    m.journal.add("j-1", "echo", "provider", rec | {"job": "j-1"}, rec["deadline"], 5)
    m.journal.update("j-1", status="running", attempt=1)
    await m.recover()
    await _settle(m)
    assert m.journal.get("j-1").status == "attested" and m.journal.get("j-1").attempt == 2
    ended = record(job="j-2", status="failed") | {"ended_reason": "timed out"}
    m2, chain2, _ = manager(ended)
    m2.journal.add("j-2", "echo", "provider", ended | {"job": "j-2"}, ended["deadline"], 5)
    await m2.recover()
    row = m2.journal.get("j-2")
    assert row.status == "failed" and row.reason == "timed out" and not chain2.txs


async def test_a_restart_takes_up_a_job_running_on_chain_that_the_journal_lacks_and_its_event_adds_nothing():
    """A state restored from a backup: the job was authorised after it, and the node's consumer group
    has read past its event. The node runs it from the chain's record, once."""
    rec = record() | {"submitted_height": 9}
    m, chain, pub = manager(rec)
    await m.recover()
    await _settle(m)
    row = m.journal.get("j-1")
    assert row is not None and row.status == "attested" and row.authorized_height == 9 and row.role == "provider"
    assert row.spec["inputs"] == rec["inputs"] and row.deadline == rec["deadline"]
    assert [(t, p["job"]) for _, t, p in chain.txs] == [("jobs.Attest", "j-1")]
    m.on_event(authorized(rec), None)  # the event, read late: the journal has the job already
    await _settle(m)
    assert len(chain.txs) == 1 and not m.tasks


@pytest.mark.parametrize("case", ["attested here", "locked", "completed", "not a participant", "another id",
                                  "deadline passed", "journaled"])
async def test_a_restart_leaves_alone_a_listed_job_it_must_not_run(case):
    rec = record()
    if case == "attested here":  # its held-back key or result went with the lost state
        rec["attestations"][ME] = {"result_hash": "cd" * 32}
    elif case in ("locked", "completed"):
        rec["status"] = case
    elif case == "not a participant":  # a lying listing; the proven record says otherwise
        rec = record(consumer=OTHER, provider="alpha")
    elif case == "deadline passed":
        rec["deadline"] = int(time.time()) - 1
    m, chain, _ = manager(rec)
    m.view.listed = ["j-2"] if case == "another id" else ["j-1"]
    if case == "journaled":  # ended here: the chain's running record does not start it again
        m.journal.add("j-1", "echo", "provider", rec | {"job": "j-1"}, rec["deadline"], 5)
        m.journal.end("j-1", "failed", "refused here")
    await m.recover()
    await _settle(m)
    assert not chain.txs and not m.tasks
    row = m.journal.get("j-1")
    assert (row is None) if case != "journaled" else (row.status == "failed")


async def test_a_restart_after_the_work_was_done_attests_again_without_rerunning():
    rec = record()
    m, chain, _ = manager(rec)
    m.journal.add("j-1", "echo", "provider", rec | {"job": "j-1"}, rec["deadline"], 5)
    m.journal.update("j-1", status="computed", result_hash="cd" * 32, records_used=7)
    Echo.behaviour = "boom"  # would fail if it ran again
    await m.recover()
    await _settle(m)
    assert [t for _, t, _ in chain.txs] == ["jobs.Attest"] and chain.txs[0][2]["result_hash"] == "cd" * 32
    assert m.journal.get("j-1").status == "attested"


async def test_an_attestation_the_chain_already_has_counts_as_done():
    rec = record()
    m, chain, _ = manager(rec)
    chain.reject["jobs.Attest"] = Code.CONFLICT
    m.on_event(authorized(rec), None)
    await _settle(m)
    assert m.journal.get("j-1").status == "attested"


def test_who_may_open_a_session():
    rec = record(consumer="bank", provider="telco")
    m, _, _ = manager(rec)
    with pytest.raises(peer.PeerUnavailable):
        m.admit("j-1", "bank.node")  # not journaled yet: come back later
    m.journal.add("j-1", "echo", "provider", rec | {"job": "j-1"}, rec["deadline"], 5)
    assert m.admit("j-1", "bank.node") == "bank"
    for account in ("mallory.node", "bank", "telco.node"):
        with pytest.raises(PeerRefused):
            m.admit("j-1", account)
    m.journal.end("j-1", "aborted", "x")
    with pytest.raises(PeerRefused, match="aborted"):
        m.admit("j-1", "bank.node")


async def test_the_consumer_result_is_sealed_to_its_node_key_and_dropped_if_the_job_fails():
    rec = record(consumer=ME, provider=OTHER)
    m, _, _ = manager(rec)
    spec, _ = await m.view.spec("j-1")
    m.journal.add("j-1", "echo", "consumer", rec | {"job": "j-1"}, rec["deadline"], 5)
    commitment = await m._commit_result(spec, b'{"cardinality": 3}')
    opened = results.open_envelope(m.identity, m.journal.result("j-1"))
    assert opened["result"] == {"cardinality": 3} and opened["commitment"] == commitment
    assert b"cardinality" not in m.journal.result("j-1")
    m.stop("j-1", "failed", "timed out")
    assert m.journal.result("j-1") is None


def test_a_job_s_breakdown_is_its_submitter_s_wait_and_the_consumer_s_phases():
    consumer = {"authorized": 10.5, "received": 10.75, "started": 11.0, "computed": 17.0, "attested": 17.25,
                "completed": 18.0, "done": 18.5, "settled": 17.9}
    provider = {**consumer, "started": 10.9, "computed": 17.5}
    b = lifecycle.breakdown(10.0, consumer, [consumer, provider])
    assert b["end_to_end"] == 8.5 and b["nodes"] == 17.5 - 10.9 and b["submission"] == 0.5
    assert (b["delivery"], b["start"], b["computation"], b["attestation"], b["completion"], b["result"]) == \
        (0.25, 0.25, 6.0, 0.25, 0.75, 0.5)
    assert b["settlement"] == 0.0 and b["total"] == 8.0  # settled before this node saw completion: 0, not negative
    with pytest.raises(KeyError):
        lifecycle.breakdown(10.0, {k: v for k, v in consumer.items() if k != "done"}, [consumer])


# -- the 3-tx settlement: a provider's key with its attestation (docs/compute.md "Fair exchange") --------

KEY = bytes(range(32))
KEY_HASH = hashlib.sha256(KEY).hexdigest()


class LockingChain(RecordingChain):
    """A chain double that applies the job rules the provider's node relies on to ``view.record``:
    attestations kept, the job locked when all agree with a key held back (failed otherwise), a key
    released with the last attestation or by jobs.Release, completed when it is."""

    def __init__(self, view):
        super().__init__()
        self.view = view

    async def submit(self, identity, type_, payload, **kw):
        await super().submit(identity, type_, payload, **kw)
        rec, member = self.view.record, identity.account.removesuffix(".node")
        if type_ == "jobs.Attest":
            rec["attestations"][member] = {k: payload.get(k, {}) for k in ("result_hash", "records", "releases")}
            if set(rec["attestations"]) == set(rec["participants"]):
                agree = len({repr(sorted(a.items())) for a in rec["attestations"].values()}) == 1
                rec["status"], rec["releases"] = ("locked" if agree else "failed"), {}
            if "key" in payload:
                assert rec["status"] == "locked", "a key sent with an attestation that does not lock the job"
        if "key" in payload:
            rec["releases"][member] = payload["key"]
            rec["status"] = "completed"


def keyed(result_hash=None, computing_s=0.0):
    class Keyed(Echo):
        async def run(self, ctx):
            await asyncio.sleep(computing_s)
            return Outcome(result_hash or "cd" * 32, records_used=42, records={"telco.subs": 42}, release_key=KEY)
    return Keyed


async def _provider_with_key(monkeypatch, consumer_attestation=None, deadline=2**40, wait_s=0.3, computing_s=0.0):
    monkeypatch.setattr(lifecycle, "KEY_WAIT_S", wait_s)
    monkeypatch.setattr(lifecycle, "LOCK_POLL_S", 0.01)  # the double answers at once
    jobtypes.JOB_TYPES["echo"] = keyed(computing_s=computing_s)
    rec = record() | {"deadline": deadline}
    m, _, pub = manager(rec)
    chain = m.chain = LockingChain(m.view)
    if consumer_attestation is not None:
        rec["attestations"][OTHER] = consumer_attestation
    m.on_event(authorized(rec), None)
    await _settle(m)
    return m, chain, rec


AGREEING = {"result_hash": "cd" * 32, "records": {"telco.subs": 42}, "releases": {ME: KEY_HASH}}


async def test_a_provider_whose_attestation_is_the_last_and_agrees_sends_its_key_with_it(monkeypatch):
    m, chain, rec = await _provider_with_key(monkeypatch, AGREEING)
    assert [(t, p.get("key")) for _, t, p in chain.txs] == [("jobs.Attest", KEY.hex())]  # one tx, no jobs.Release
    assert rec["status"] == "completed" and m.journal.get("j-1").status == "completed"


@pytest.mark.parametrize("change", [{"result_hash": "ef" * 32}, {"records": {"telco.subs": 41}},
                                    {"releases": {ME: "ab" * 32}}])
async def test_a_provider_never_sends_its_key_with_an_attestation_the_others_disagree_with(monkeypatch, change):
    m, chain, rec = await _provider_with_key(monkeypatch, AGREEING | change)
    assert [t for _, t, _ in chain.txs] == ["jobs.Attest"] and "key" not in chain.txs[0][2]
    assert not any(KEY.hex() in repr(p) for _, _, p in chain.txs)  # the key never left the node
    assert rec["status"] == "failed" and m.journal.get("j-1").status == "failed"


async def test_without_the_others_attestations_in_time_a_provider_attests_then_releases_after_the_lock(monkeypatch):
    monkeypatch.setattr(lifecycle, "KEY_WAIT_S", 0.2)
    monkeypatch.setattr(lifecycle, "LOCK_POLL_S", 0.01)
    jobtypes.JOB_TYPES["echo"] = keyed()
    rec = record()
    m, _, _ = manager(rec)
    chain = m.chain = LockingChain(m.view)
    m.on_event(authorized(rec), None)
    await asyncio.sleep(0.6)  # the consumer attests late (a multi-provider job: another provider waiting)
    assert [(t, "key" in p) for _, t, p in chain.txs] == [("jobs.Attest", False)]
    await chain.submit(Identity.generate(f"{OTHER}.node"), "jobs.Attest", AGREEING)  # locks the job
    await _settle(m)
    assert [(t, "key" in p) for _, t, p in chain.txs][-1] == ("jobs.Release", True)
    assert rec["status"] == "completed"  # its JobCompleted event then ends the journal's job


async def test_near_its_deadline_a_provider_sends_its_key_neither_with_its_attestation_nor_after_the_lock(monkeypatch):
    """Started outside the margin, computed into it (0.6 s past its edge)."""
    deadline = time.time() + lifecycle.RELEASE_MARGIN_S + 0.4
    m, chain, rec = await _provider_with_key(monkeypatch, AGREEING, deadline=deadline, computing_s=1.0)
    assert [t for _, t, _ in chain.txs] == ["jobs.Attest"] and "key" not in chain.txs[0][2]
    assert rec["status"] == "locked" and not rec["releases"]  # refunded at the deadline, no key public


@pytest.mark.parametrize("role", ["provider", "consumer"])
async def test_a_job_authorised_within_the_release_margin_is_refused_at_once_without_computing(monkeypatch, role):
    """It could never settle (no provider may release its key that near the deadline): every node
    fails it before any work, and the consumer is refunded then rather than at the deadline."""
    ran = []

    class Counting(Echo):
        async def run(self, ctx):
            ran.append(ctx.spec.job)
            return await super().run(ctx)
    jobtypes.JOB_TYPES["echo"] = Counting
    rec = record(**({"consumer": ME, "provider": OTHER} if role == "consumer" else {}))
    rec["deadline"] = int(time.time() + lifecycle.RELEASE_MARGIN_S - 2)
    m, chain, _ = manager(rec)
    m.on_event(authorized(rec), None)
    await _settle(m)
    assert not ran
    [(_, type_, payload)] = chain.txs
    assert type_ == "jobs.Fail" and payload["reason"].startswith("the job's deadline is ")
    assert f"within the {lifecycle.RELEASE_MARGIN_S:.0f} s a provider's release key needs" in payload["reason"]
    assert m.journal.get("j-1").status == "failed"


async def test_the_release_margin_is_judged_on_the_chain_s_deadline_not_the_event_s():
    """A forged or stale JobAuthorized naming a far deadline does not get a job that the chain's
    proven record puts within the margin computed; nor does one naming a near deadline refuse a
    job the chain gives time."""
    near = record() | {"deadline": int(time.time() + lifecycle.RELEASE_MARGIN_S - 2)}
    m, chain, _ = manager(near)
    m.on_event(authorized(near | {"deadline": 2**40}), None)
    await _settle(m)
    assert [t for _, t, _ in chain.txs] == ["jobs.Fail"]
    far = record()
    m, chain, _ = manager(far)
    m.on_event(authorized(far | {"deadline": int(time.time() + 5)}), None)
    await _settle(m)
    assert [t for _, t, _ in chain.txs] == ["jobs.Attest"]


async def test_a_consumer_never_waits_and_a_provider_that_is_not_the_last_attests_at_once(monkeypatch):
    monkeypatch.setattr(lifecycle, "KEY_WAIT_S", 30.0)  # a wait would outlast the test
    jobtypes.JOB_TYPES["echo"] = keyed()
    rec = record(consumer=ME, provider=OTHER)  # this node is the consumer
    m, _, _ = manager(rec)
    chain = m.chain = LockingChain(m.view)
    m.on_event(authorized(rec), None)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if chain.txs:
            break
    assert [(t, "key" in p) for _, t, p in chain.txs] == [("jobs.Attest", False)]
    for task in list(m.tasks.values()):
        task.cancel()
    await _settle(m)


async def test_a_restarted_provider_sends_its_kept_key_with_its_attestation(monkeypatch):
    import json
    monkeypatch.setattr(lifecycle, "KEY_WAIT_S", 0.3)
    monkeypatch.setattr(lifecycle, "LOCK_POLL_S", 0.01)
    rec = record()
    rec["attestations"][OTHER] = AGREEING
    m, _, _ = manager(rec)
    chain = m.chain = LockingChain(m.view)
    m.journal.add("j-1", "echo", "provider", rec | {"job": "j-1"}, rec["deadline"], 5)
    m.journal.update("j-1", status="computed", result_hash="cd" * 32, records_used=42)
    m.journal.put_held("j-1", "attestation", json.dumps({"records": {"telco.subs": 42},
                                                         "releases": {ME: KEY_HASH}}).encode())
    m.journal.put_held("j-1", "release_key", KEY)
    Echo.behaviour = "boom"  # would fail if it ran again
    await m.recover()
    await _settle(m)
    assert [(t, p.get("key")) for _, t, p in chain.txs] == [("jobs.Attest", KEY.hex())]
    assert rec["status"] == "completed"


class CountingView(FakeView):
    def __init__(self, rec):
        super().__init__(rec)
        self.job_reads = 0

    async def job(self, job):
        self.job_reads += 1
        return await super().job(job)


def attested(job, n=0):
    return Event(id=f"9/0/{n}", type="JobAttested", entity=f"job:{job}", source="consensus",
                 data={"job": job, "member": OTHER})


async def _waiting_provider(monkeypatch, poll_s):
    """A provider that computed and now waits for the consumer's attestation, reading every poll_s."""
    monkeypatch.setattr(lifecycle, "KEY_WAIT_S", 30.0)
    monkeypatch.setattr(lifecycle, "LOCK_POLL_FIRST_S", poll_s)
    monkeypatch.setattr(lifecycle, "LOCK_POLL_S", poll_s)
    jobtypes.JOB_TYPES["echo"] = keyed()
    rec = record()
    m, _, _ = manager(rec)
    m.view = CountingView(rec)
    chain = m.chain = LockingChain(m.view)
    m.on_event(authorized(rec), None)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if m.view.job_reads:
            break
    assert m.view.job_reads == 1 and not chain.txs  # waiting: its next poll is poll_s away
    return m, chain, rec


async def test_a_chain_event_about_the_job_wakes_a_waiting_provider_at_once_and_others_do_not(monkeypatch):
    m, chain, rec = await _waiting_provider(monkeypatch, poll_s=5.0)
    m.on_event(attested("j-2"), None)  # another job's
    await asyncio.sleep(0.2)
    assert m.view.job_reads == 1 and not chain.txs
    rec["attestations"][OTHER] = AGREEING  # what the event says; the read that follows decides
    began = time.monotonic()
    m.on_event(attested("j-1"), None)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if chain.txs:
            break
    assert time.monotonic() - began < 1.0  # not the 5 s poll
    assert [(t, p.get("key")) for _, t, p in chain.txs] == [("jobs.Attest", KEY.hex())]
    await _settle(m)
    assert rec["status"] == "completed"


async def test_an_event_that_is_not_so_wakes_a_read_but_decides_nothing(monkeypatch):
    m, chain, rec = await _waiting_provider(monkeypatch, poll_s=5.0)
    m.on_event(attested("j-1"), None)  # a hint the chain does not bear out
    await asyncio.sleep(0.2)
    assert m.view.job_reads == 2 and not chain.txs
    for task in list(m.tasks.values()):
        task.cancel()
    await _settle(m)
    assert not m._waiting


async def test_a_flood_of_events_about_a_waiting_job_reads_at_most_once_per_wake_gap(monkeypatch):
    monkeypatch.setattr(lifecycle, "WAKE_GAP_S", 0.05)
    m, chain, rec = await _waiting_provider(monkeypatch, poll_s=5.0)
    began = time.monotonic()
    n = 0
    while time.monotonic() - began < 0.5:
        m.on_event(attested("j-1", n), None)
        n += 1
        await asyncio.sleep(0.001)
    elapsed, reads = time.monotonic() - began, m.view.job_reads - 1
    assert n > 20 and 2 <= reads <= elapsed / 0.05 + 2  # woken, but never more than one read a gap
    assert not chain.txs
    for task in list(m.tasks.values()):
        task.cancel()
    await _settle(m)


class PagingClient:
    """A chain node's answers to a listing, one page a call: ``pages`` of keys, or without end."""

    chain_id = "rdx-test"

    def __init__(self, pages=None):
        self.pages, self.calls = pages, 0

    async def _query(self, path):
        self.calls += 1
        if self.pages is None:  # a hostile node: always another page
            keys = [f"jobs-open-by/member:{ME}/j-{self.calls}-{i}" for i in range(500)]
            return {"items": dict.fromkeys(keys, 1), "next": keys[-1]}
        keys = self.pages[self.calls - 1]
        return {"items": dict.fromkeys(keys, 1), "next": keys[-1] if self.calls < len(self.pages) else None}


async def test_the_open_jobs_listing_is_bounded_and_keeps_only_keys_under_its_prefix():
    from services.common.chain import ChainClient

    client = PagingClient()
    client.query_prefix = ChainClient.query_prefix.__get__(client)
    view = ChainView.__new__(ChainView)
    view.client = client
    listed = await view.open_jobs(ME, limit=1200)
    assert len(listed) == 1200 and client.calls == 3  # then it stops asking
    client = PagingClient([[f"jobs-open-by/member:{ME}/j-1", f"jobs-open-by/member:{OTHER}/j-2", "jobs/j-3",
                            f"jobs-open-by/member:{ME}x/j-4"], [f"jobs-open-by/member:{ME}/j-5"]])
    client.query_prefix = ChainClient.query_prefix.__get__(client)
    view.client = client
    assert await view.open_jobs(ME) == ["j-1", "j-5"]
    for page in ({"items": ["j-1"], "next": None}, {"next": None}, None, "junk"):  # answers that are no listing
        client = PagingClient()
        client._query = lambda path, page=page: asyncio.sleep(0, page)
        client.query_prefix = ChainClient.query_prefix.__get__(client)
        view.client = client
        with pytest.raises(ChainUnavailable):
            await view.open_jobs(ME)


class OverlapView(FakeView):
    """Each grant or listing read waits until the other kind has begun: read one after the other, they
    never meet (the read times out); read together, both return."""

    def __init__(self, record):
        super().__init__(record)
        self.began = {"grant": asyncio.Event(), "listing": asyncio.Event()}

    async def _meet(self, mine, other):
        self.began[mine].set()
        await asyncio.wait_for(self.began[other].wait(), 2)

    async def grant(self, grant):
        await self._meet("grant", "listing")
        return await super().grant(grant)

    async def listing(self, asset, version):
        await self._meet("listing", "grant")
        return await super().listing(asset, version)


async def test_a_provider_reads_its_grants_and_listings_in_one_round_trip():
    """Issue 23's start phase: the provider's policy reads went one after the other (two round trips
    an input, after the job's own); they now go together."""
    rec = record()
    m, chain, _ = manager(rec)
    m.view = OverlapView(rec)
    m.on_event(authorized(rec), None)
    await _settle(m)
    assert m.journal.get("j-1").status == "attested"
    assert [t for _, t, _ in chain.txs] == ["jobs.Attest"]


class RoundCounting:
    """A chain client that answers each batch of concurrent queries as one round trip."""

    chain_id = "rdx-test"

    def __init__(self, rec):
        self.rec, self.rounds, self.paths, self._open = rec, 0, [], 0

    async def query(self, path):
        if self._open == 0:
            self.rounds += 1
        self._open += 1
        self.paths.append(path)
        await asyncio.sleep(0.01)
        self._open -= 1
        if path.startswith("/jobs/"):
            return self.rec
        m = path.rsplit("/", 1)[1]
        return {"status": "active", "node": {"account": f"{m}.node", "endpoint": f"{m}.example:1"}}


async def test_a_job_s_spec_reads_the_job_and_its_participants_in_one_round_trip():
    """Issue 23's start phase: the participants the proven JobAuthorized named are read with the job
    (was: the job, then its members). The record decides: a hint that differs is read again from it."""
    from services.compute.chainview import ChainView as Real

    rec = record()
    client = RoundCounting(rec)
    spec, _ = await Real(client).spec("j-1", rec["participants"])
    assert client.rounds == 1 and sorted(spec.nodes) == sorted(rec["participants"])
    client = RoundCounting(rec)
    spec, _ = await Real(client).spec("j-1", ["someone-else"])
    assert client.rounds == 2 and sorted(spec.nodes) == sorted(rec["participants"])
    assert "/members/someone-else" not in [f"/members/{m}" for m in spec.nodes]
