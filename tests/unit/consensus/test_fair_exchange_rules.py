"""Issue 16, parts 2-4 on the chain's own rules (through FinalizeBlock/Commit, invariants after
every block): a job whose provider holds back a release key is locked, not completed, once every
party agrees; the consumer cannot end a locked job; the providers are paid only when every key is
on chain; records used are what the parties agree on, and a disagreement fails the job unpaid."""

from __future__ import annotations

import hashlib
import os

import pytest
from test_domains import COMMIT, RESULT, World

from services.common.listing import example_metadata
from services.common.tx import Code

KEY = os.urandom(32).hex()
KEY_HASH = hashlib.sha256(bytes.fromhex(KEY)).hexdigest()
ASSET = "telco.subscribers"


@pytest.fixture
def w(tmp_path):
    world = World(tmp_path)
    world.list(price={"model": "per_record", "amount": 3}, metadata=example_metadata("Subscribers", row_count=200))
    world.request()
    world.send(world.telco, "access.Approve", {"id": "g-1"})
    assert world.submit(max_price=600)[0] == Code.OK
    return world


def attest(w, node, *, records_used=10, records=None, releases=None, result=RESULT, job="j-1"):
    commitments = {ASSET: COMMIT} if node is w.telco_node else {}
    return w.send(node, "jobs.Attest", {"job": job, "result_hash": result, "records_used": records_used,
                                        "input_commitments": commitments, "records": records or {},
                                        "releases": releases or {}})


def locked(w):
    assert attest(w, w.telco_node, records_used=50, records={ASSET: 50}, releases={"telco": KEY_HASH})[0] == Code.OK
    assert attest(w, w.bank_node, records_used=7, records={ASSET: 50}, releases={"telco": KEY_HASH})[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "locked" and job["result_hash"] == RESULT
    assert w.state("bank/escrow/j-1")["amount"] == 600  # still held: nobody paid, nobody refunded
    return job


def test_a_release_key_locks_the_job_and_its_release_settles_it(w):
    locked(w)
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": "00" * 32})[0] == Code.INVALID_PAYLOAD
    assert w.send(w.bank_node, "jobs.Release", {"job": "j-1", "key": KEY})[0] == Code.UNAUTHORIZED
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": KEY}) == (Code.OK, "")
    job = w.state("jobs/j-1")
    assert job["status"] == "completed" and job["releases"] == {"telco": KEY}
    # 50 agreed records x 3 = 150: association 2% = 3, compute 1% = 1 -> 0 per node (floored), telco 147
    assert w.balance("bank") == 10_000 - 150 and w.balance("telco") == 147 and w.balance("association") == 3
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": KEY})[0] == Code.INVALID_STATE


def test_the_consumer_cannot_end_a_locked_job_by_any_key(w):
    locked(w)
    for signer, tx in ((w.bank, "jobs.Abort"), (w.bank, "jobs.Fail"), (w.bank_node, "jobs.Fail")):
        code, log = w.send(signer, tx, {"job": "j-1", "reason": "changed my mind"})
        assert code == Code.INVALID_STATE and "locked for release" in log, (tx, log)
    assert w.state("jobs/j-1")["status"] == "locked" and w.balance("bank") == 10_000 - 600


def test_the_consumer_aborting_before_the_lock_is_refunded_in_full(w):
    assert attest(w, w.telco_node, records={ASSET: 50}, releases={"telco": KEY_HASH})[0] == Code.OK
    assert w.send(w.bank, "jobs.Abort", {"job": "j-1", "reason": "no longer needed"})[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "aborted" and w.balance("bank") == 10_000 and w.balance("telco") == 0
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": KEY})[0] == Code.INVALID_STATE


def test_a_provider_may_give_up_a_locked_job_and_the_consumer_is_refunded(w):
    locked(w)
    assert w.send(w.telco_node, "jobs.Abort", {"job": "j-1", "reason": "telco withdraws"})[0] == Code.OK
    assert w.balance("bank") == 10_000 and w.balance("telco") == 0


def test_a_key_never_released_ends_the_job_refunded_at_its_deadline(w):
    locked(w)
    w.chain.t0 += 601  # block time passes the deadline
    w.chain.block()
    job = w.state("jobs/j-1")
    assert job["status"] == "failed" and "release key" in job["ended_reason"]
    assert w.balance("bank") == 10_000 and w.balance("telco") == 0


def test_inflated_records_fail_the_job_unpaid_and_the_dispute_is_on_chain(w):
    """The provider claims every row; the consumer's node saw 50: nobody is charged."""
    assert attest(w, w.telco_node, records_used=200, records={ASSET: 200})[0] == Code.OK
    assert attest(w, w.bank_node, records_used=9, records={ASSET: 50})[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "failed" and "different records used" in job["ended_reason"]
    assert w.balance("bank") == 10_000 and w.balance("telco") == 0 and w.state("bank/escrow/j-1") is None
    [dispute] = [e.data for e in w.chain.db.events_after((0, -2, -1)) if e.type == "JobRecordsDisputed"]
    assert dispute["asset"] == ASSET and dispute["counts"] == {"telco": 200, "bank": 50}
    assert job["records_disputed"] == {ASSET: {"telco": 200, "bank": 50}}


def test_records_used_alone_is_the_providers_count_bounded_by_the_listing(w):
    """A job type whose consumer states no count: the provider's, capped at the declared rows."""
    assert attest(w, w.telco_node, records_used=120)[0] == Code.OK
    assert attest(w, w.bank_node, records_used=1)[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "completed" and w.balance("bank") == 10_000 - 360 + 1  # its node's compute fee


def test_two_parties_naming_different_release_hashes_fail_the_job(w):
    assert attest(w, w.telco_node, records={ASSET: 5}, releases={"telco": KEY_HASH})[0] == Code.OK
    assert attest(w, w.bank_node, records={ASSET: 5}, releases={"telco": "ab" * 32})[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "failed" and "release keys" in job["ended_reason"] and w.balance("bank") == 10_000


@pytest.mark.parametrize("payload, code", [
    ({"records": {"other.asset": 5}}, Code.INVALID_PAYLOAD),
    ({"releases": {"bank": KEY_HASH}}, Code.INVALID_PAYLOAD),  # the consumer provides no input
    ({"records": {ASSET: -1}}, Code.INVALID_PAYLOAD),
    ({"records": {ASSET: 10**12 + 1}}, Code.INVALID_PAYLOAD),
    ({"releases": {"telco": "not-a-hash"}}, Code.INVALID_PAYLOAD),
    ({"records": {ASSET: "5"}}, Code.INVALID_PAYLOAD),
])
def test_bad_records_and_release_hashes_are_refused_and_the_job_runs_on(w, payload, code):
    body = {"job": "j-1", "result_hash": RESULT, "records_used": 1, "input_commitments": {ASSET: COMMIT}, **payload}
    assert w.send(w.telco_node, "jobs.Attest", body)[0] == code
    assert w.state("jobs/j-1")["status"] == "running" and w.state("jobs/j-1")["attestations"] == {}
    sync_nonce(w, w.telco_node)  # a schema refusal spends no nonce, a handler's does
    assert attest(w, w.telco_node)[0] == Code.OK


@pytest.mark.parametrize("key", ["zz" * 32, "ab", "AB" * 32, 5])
def test_a_malformed_release_is_refused(w, key):
    locked(w)
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": key})[0] in (Code.INVALID_PAYLOAD,
                                                                                  Code.UNDECODABLE)
    assert w.state("jobs/j-1")["status"] == "locked"
    sync_nonce(w, w.telco_node)
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": KEY})[0] == Code.OK


def sync_nonce(w, who) -> None:
    w.chain.nonces[who.account] = w.state(f"accounts/{who.account}")["nonce"]
