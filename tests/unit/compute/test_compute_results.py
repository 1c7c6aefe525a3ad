"""Where results are stored, without servers: any participant's node may hold a result, but only
for its own member (sealed to the key the chain holds for ``<member>.node``), only while the job
is active there, never across attempts, dropped by the kill switch, failure and recovery on every
node; the node's API releases it to its own member once the job completed. And supply_chain:
every party's stored outcome is its own records' statuses, under the commitment it attested."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3

import httpx
import pytest
from fastapi import FastAPI
from nacl.exceptions import CryptoError

from services.common.events import Event
from services.common.identity import Identity
from services.compute import api, jobtypes, peer, results
from services.compute.jobtypes import job_type
from services.compute.jobtypes import supply_chain as sc
from services.compute.jobtypes.base import JobContext, JobRefused, JobType, Outcome, PeerLost
from services.compute.journal import Journal
from services.compute.datasets import Datasets
from services.compute.lifecycle import JobManager
from test_compute_lifecycle import FakeView, RecordingChain, RecordingPublisher, ThreadRunner, authorized, record
from test_jobtypes_aggregation import contexts, make_spec, mesh, release, run_member
from test_jobtypes_supply_chain import KINDS, clear_status, records, table

ME, OTHER = "telco", "bank"  # this node is the telco's: a provider, not the consumer


class KeyedView(FakeView):
    """The chain's accounts: each ``<member>.node`` with its registered key; records what was asked."""

    def __init__(self, rec, keys: dict[str, Identity]):
        super().__init__(rec)
        self.keys, self.asked = keys, []

    async def account(self, account):
        self.asked.append(account)
        ident = self.keys.get(account)
        return {"account": account, "public_key": ident.public_key} if ident else None


def node(rec, member=ME, keys=None, conn=None):
    keys = keys or {f"{m}.node": Identity.generate(f"{m}.node") for m in rec["participants"]}
    conn = conn or sqlite3.connect(":memory:", isolation_level=None)
    m = JobManager(member=member, identity=keys[f"{member}.node"], chain_id="c", chain=RecordingChain(),
                   view=KeyedView(rec, keys), datasets=Datasets(), journal=Journal(conn), runner=ThreadRunner(),
                   hub=peer.SessionHub(), publisher=RecordingPublisher(), peer_wait_s=0.2, max_attempts=2)
    return m, keys


def journaled(m, rec, role="provider"):
    m.journal.add(rec["id"], rec["type"], role, rec | {"job": rec["id"]}, rec["deadline"], 5)


def event(type_, **data):
    return Event(id=f"9/{type_}", type=type_, entity="x", source="consensus", data=data)


async def _settle(m):
    for _ in range(300):
        await asyncio.sleep(0.01)
        if not any(not t.done() for t in m.tasks.values()):
            return


# -- the storage rule -----------------------------------------------------------------------------

async def test_a_provider_node_seals_a_result_for_its_own_member_to_the_key_on_chain():
    rec = record(consumer=OTHER, provider=ME)
    m, keys = node(rec)
    spec, _ = await m.view.spec("j-1")
    journaled(m, rec)
    commitment = await m._commit_result(spec, b'{"mine": [1, 2]}')
    assert m.view.asked == [f"{ME}.node"]  # never the consumer's account
    envelope = m.journal.result("j-1")
    opened = results.open_envelope(keys[f"{ME}.node"], envelope)
    assert opened["member"] == ME and opened["job"] == "j-1" and opened["result"] == {"mine": [1, 2]}
    assert opened["commitment"] == commitment == results.commitment_of(bytes.fromhex(opened["salt"]),
                                                                       b'{"mine": [1, 2]}')
    with pytest.raises(CryptoError):
        results.open_envelope(keys[f"{OTHER}.node"], envelope)  # the consumer cannot open the provider's
    assert b"mine" not in envelope


async def test_the_seal_follows_the_key_the_chain_holds_not_the_one_the_node_loaded():
    rec = record(consumer=OTHER, provider=ME)
    m, keys = node(rec)
    registered = Identity.generate(f"{ME}.node")  # e.g. the key was rotated on chain
    m.view.keys[f"{ME}.node"] = registered
    spec, _ = await m.view.spec("j-1")
    journaled(m, rec)
    await m._commit_result(spec, b"{}")
    assert results.open_envelope(registered, m.journal.result("j-1"))["member"] == ME
    with pytest.raises(CryptoError):
        results.open_envelope(m.identity, m.journal.result("j-1"))


async def test_a_result_is_not_stored_once_the_job_ended_here():
    rec = record(consumer=OTHER, provider=ME)
    m, _ = node(rec)
    spec, _ = await m.view.spec("j-1")
    journaled(m, rec)
    m.journal.end("j-1", "aborted", "member suspended")
    with pytest.raises(JobRefused, match="ended"):
        await m._commit_result(spec, b"{}")
    assert m.journal.result("j-1") is None
    assert m.journal.put_result("unknown-job", b"x") is False and m.journal.result("unknown-job") is None


@pytest.mark.parametrize("role", ["consumer", "provider"])
@pytest.mark.parametrize("ending", [
    ("JobAborted", {"job": "j-1", "reason": "by the association"}),
    ("MemberSuspended", {"member": OTHER, "reason": "audit"}),
    ("AssetSuspended", {"asset": "telco.subs", "reason": "audit"}),
    ("JobFailed", {"job": "j-1", "reason": "deadline"}),
])
async def test_the_kill_switch_and_a_failure_drop_the_stored_result_on_every_node(role, ending):
    rec = record(consumer=ME if role == "consumer" else OTHER, provider=OTHER if role == "consumer" else ME)
    m, _ = node(rec)
    spec, _ = await m.view.spec("j-1")
    journaled(m, rec, role)
    m.journal.update("j-1", status="attested", result_hash="cd" * 32)
    await m._commit_result(spec, b"{}")
    assert m.journal.result("j-1") is not None
    m.on_event(event(ending[0], **ending[1]), None)
    assert m.journal.get("j-1").status in ("aborted", "failed")
    assert m.journal.result("j-1") is None


@pytest.mark.parametrize("chain_status", ["aborted", "failed", "completed"])
async def test_recovery_keeps_a_result_only_for_a_job_the_chain_completed(chain_status):
    rec = record(consumer=OTHER, provider=ME)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    m, keys = node(rec, conn=conn)
    spec, _ = await m.view.spec("j-1")
    journaled(m, rec)
    await m._commit_result(spec, b'{"kept": true}')
    m.journal.update("j-1", status="attested", result_hash="cd" * 32)
    restarted, _ = node(rec | {"status": chain_status, "ended_reason": "x"}, keys=keys, conn=conn)
    await restarted.recover()
    assert restarted.journal.get("j-1").status == chain_status
    kept = restarted.journal.result("j-1")
    assert (kept is not None) == (chain_status == "completed")
    if kept:
        assert results.open_envelope(keys[f"{ME}.node"], kept)["result"] == {"kept": True}


class TwoRuns(JobType):
    """A provider's job type that stores a result and then loses its peer on the first run."""

    name = "two_runs"

    async def run(self, ctx: JobContext) -> Outcome:
        if ctx.attempt == 1:
            await ctx.commit_result(b'{"run": 1}')
            raise PeerLost("the consumer's node went away")
        return Outcome("ab" * 32, records_used=1)  # the second run gives this member nothing


@pytest.fixture
def two_runs():
    jobtypes.JOB_TYPES["two_runs"] = TwoRuns
    yield
    jobtypes.JOB_TYPES.pop("two_runs")


async def test_a_run_that_is_retried_leaves_no_result_of_the_lost_run(two_runs):
    rec = record(type_="two_runs", consumer=OTHER, provider=ME)
    m, _ = node(rec)
    m.on_event(authorized(rec), None)
    await _settle(m)
    row = m.journal.get("j-1")
    assert row.status == "attested" and row.attempt == 2
    assert m.journal.result("j-1") is None


# -- the API: the member's own result, from its own node ------------------------------------------

def client(m: JobManager, member: str) -> httpx.AsyncClient:
    """The node's API in this event loop and thread (the journal's SQLite connection is this thread's)."""
    app = FastAPI()
    app.include_router(api.router(member=member, node_account=f"{member}.node", public_key=m.identity.public_key,
                                  peer_endpoint="127.0.0.1:1", runner="thread", workers=1, datasets=None,
                                  journal=m.journal, registered=lambda: True))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


async def test_a_provider_node_serves_its_own_result_once_the_job_completed():
    rec = record(consumer=OTHER, provider=ME)
    m, keys = node(rec)
    spec, _ = await m.view.spec("j-1")
    journaled(m, rec)
    await m._commit_result(spec, b'{"mine": true}')
    m.journal.update("j-1", status="attested", result_hash="cd" * 32)
    http = client(m, ME)
    assert (await http.get("/jobs/j-1/result")).status_code == 409  # not before the chain completed (and settled) it
    assert (await http.get("/jobs/nope/result")).status_code == 404
    m.on_event(event("JobCompleted", job="j-1"), None)
    answer = await http.get("/jobs/j-1/result")
    assert answer.status_code == 200
    body = answer.json()
    assert body["sealed_to"] == f"{ME}.node" and body["result_hash"] == "cd" * 32
    assert results.open_envelope(keys[f"{ME}.node"], body["envelope"])["result"] == {"mine": True}
    with pytest.raises(CryptoError):
        results.open_envelope(keys[f"{OTHER}.node"], body["envelope"])


async def test_a_node_without_a_result_for_its_member_answers_404_and_a_failed_job_409():
    rec = record(consumer=OTHER, provider=ME)
    m, _ = node(rec)
    journaled(m, rec)
    m.journal.update("j-1", status="attested")
    m.on_event(event("JobCompleted", job="j-1"), None)
    http = client(m, ME)
    assert (await http.get("/jobs/j-1/result")).status_code == 404  # completed, but the job type gave ME nothing
    rec2 = record(job="j-2", consumer=OTHER, provider=ME)
    m2, _ = node(rec2)
    spec, _ = await m2.view.spec("j-2")
    journaled(m2, rec2)
    await m2._commit_result(spec, b"{}")
    m2.stop("j-2", "failed", "a peer failed it")
    assert (await client(m2, ME).get("/jobs/j-2/result")).status_code == 409
    assert m2.journal.result("j-2") is None


# -- supply_chain: every party's own outcome, under the commitment it attested ----------------------

async def test_every_supply_chain_party_commits_its_own_per_record_outcome():
    recs = records()
    spec = make_spec("supply_chain", "buyer", ["seller", "carrier", "bankx"], {"dataset": "contracts", "kinds": KINDS})
    chans, _, _ = mesh(spec.participants)
    stored: dict[str, bytes] = {}
    data = {"contracts": table(recs["buyer"]), "seller.data": table(recs["seller"]),
            "carrier.data": table(recs["carrier"]), "bankx.data": table(recs["bankx"])}
    ctxs = contexts(spec, chans, data, stored)  # its commit_result: commitment = SHA-256(result)
    job = job_type("supply_chain")
    outs = dict(zip(ctxs, await asyncio.gather(*(run_member(job, c, chans[m]) for m, c in ctxs.items()))))
    await release(outs, stored, ctxs)  # the consumer's outcome exists only once the providers' keys are released
    assert set(stored) == set(spec.participants)
    for member in spec.participants:
        got = json.loads(stored[member])
        others = [o for o in spec.participants if o != member]
        clear = {o: clear_status(recs[member], recs[o]) for o in others}
        assert got["records"] == len(recs[member]) and got["counterparts"] == sorted(KINDS[o] for o in others)
        assert [r["reference"] for r in got["per_record"]] == list(recs[member])  # its own records, only
        for row in got["per_record"]:
            assert row["status"] == {KINDS[o]: clear[o][row["reference"]] for o in others}
        expected = sorted(({"reference": ref, "counterpart": KINDS[o], "status": s}
                           for o in others for ref, s in clear[o].items() if s != "agrees"),
                          key=lambda d: (d["reference"], d["counterpart"]))
        assert got["disagreements"] == expected
        if member != spec.consumer:  # the consumer's outcome comes after its attestation: not in its summary
            assert outs[member].summary == {"disagreements": len(expected)}
        if member != "bankx":
            assert "PO-CANARY-77" not in stored[member].decode()  # the payer's extra record is its own
    # the result hash every party attests binds every provider's stored outcome (c_P) and every data
    # (d_P); the consumer's outcome comes after the attestations (issue 16): its c_P is empty
    entries = {m: (KINDS[m], "00" * 32, hashlib.sha256(stored[m]).hexdigest() if m != spec.consumer else "")
               for m in spec.participants}
    assert {o.result_hash for o in outs.values()} == {sc.result_hash(spec, entries)}
