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
    for signer, tx in ((w.bank, "jobs.Abort"), (w.bank_node, "jobs.Fail")):  # too late: paid, and said so
        assert w.send(signer, tx, {"job": "j-1", "reason": "changed my mind"}) == (
            Code.INVALID_STATE, "job j-1 is not running: it is completed")
    assert w.balance("bank") == 10_000 - 150


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


# --------------------------------------------------------------------------------------------------
# The 3-tx settlement: a provider's key with the job's last missing attestation (jobs.Attest ``key``)


def with_key(w, node=None, *, key=KEY, releases=None, records=None, result=RESULT, job="j-1"):
    node = node or w.telco_node
    commitments = {ASSET: COMMIT} if node is w.telco_node else {}
    return w.send(node, "jobs.Attest", {"job": job, "result_hash": result, "records_used": 50,
                                        "input_commitments": commitments, "records": records or {ASSET: 50},
                                        "releases": {"telco": KEY_HASH} if releases is None else releases,
                                        "key": key})


def events_of(w, job="j-1") -> list[str]:
    return [e.type for e in w.chain.db.events_after((0, -2, -1)) if e.entity == f"job:{job}"]


def consumer_attested(w):
    assert attest(w, w.bank_node, records_used=7, records={ASSET: 50}, releases={"telco": KEY_HASH})[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "running"


def test_a_key_with_the_last_attestation_locks_releases_and_settles_in_one_tx(w):
    consumer_attested(w)
    before = len(events_of(w))
    assert with_key(w) == (Code.OK, "")
    job = w.state("jobs/j-1")
    assert job["status"] == "completed" and job["releases"] == {"telco": KEY} and job["locked_height"]
    assert w.balance("bank") == 10_000 - 150 and w.balance("telco") == 147 and w.balance("association") == 3
    # the same events as the 4-tx settlement, all from the provider's one tx
    assert events_of(w)[before:] == ["JobAttested", "JobLocked", "JobReleased", "JobCompleted", "JobSettled"]
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-1", "key": KEY})[0] == Code.INVALID_STATE  # nothing left


def refused_and_nothing_stored(w, answer, code, words):
    assert answer[0] == code and words in answer[1], answer
    job = w.state("jobs/j-1")
    assert job["status"] == "running" and "telco" not in job["attestations"] and not job.get("releases")
    assert w.state("bank/escrow/j-1")["amount"] == 600 and w.balance("telco") == 0


def test_a_key_while_another_attestation_is_missing_is_refused_and_nothing_is_stored(w):
    refused_and_nothing_stored(w, with_key(w), Code.INVALID_STATE, "last missing attestation")
    assert "JobAttested" not in events_of(w)
    sync_nonce(w, w.telco_node)
    consumer_attested(w)  # the consumer attests after: the provider then sends its key with its own
    assert with_key(w)[0] == Code.OK and w.state("jobs/j-1")["status"] == "completed"


def test_a_wrong_key_is_refused_and_nothing_is_stored(w):
    consumer_attested(w)
    refused_and_nothing_stored(w, with_key(w, key="00" * 32), Code.INVALID_PAYLOAD, "does not open")


def test_a_key_from_the_consumers_node_is_refused(w):
    assert attest(w, w.telco_node, records_used=50, records={ASSET: 50}, releases={"telco": KEY_HASH})[0] == Code.OK
    answer = with_key(w, w.bank_node)
    assert answer[0] == Code.UNAUTHORIZED and "holds no release key" in answer[1], answer
    job = w.state("jobs/j-1")
    assert job["status"] == "running" and set(job["attestations"]) == {"telco"}


@pytest.mark.parametrize("disagreement", [
    {"result": "ef" * 32},                                  # another result
    {"records": {ASSET: 51}},                               # another count
    {"releases": {"telco": KEY_HASH}, "consumer_hash": "ab" * 32},  # the consumer saw another key hash
])
def test_a_key_with_an_attestation_that_disagrees_is_refused_whole_and_the_job_then_fails_unreleased(w, disagreement):
    consumer_hash = disagreement.pop("consumer_hash", KEY_HASH)
    assert attest(w, w.bank_node, records_used=7, records={ASSET: 50}, releases={"telco": consumer_hash})[0] == Code.OK
    refused_and_nothing_stored(w, with_key(w, **disagreement), Code.INVALID_STATE, "disagree")
    assert "JobFailed" not in events_of(w) and "JobReleased" not in events_of(w)
    sync_nonce(w, w.telco_node)  # the node attests without its key: the job fails, no key on chain
    body = {k: v for k, v in disagreement.items() if k != "releases"}
    assert attest(w, w.telco_node, records_used=50, records=body.get("records", {ASSET: 50}),
                  releases={"telco": KEY_HASH}, result=body.get("result", RESULT))[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "failed" and not job.get("releases") and w.balance("bank") == 10_000


def test_a_duplicate_key_attestation_is_refused(w):
    consumer_attested(w)
    assert with_key(w)[0] == Code.OK
    assert with_key(w)[0] == Code.INVALID_STATE  # completed
    assert w.balance("telco") == 147  # paid once


@pytest.mark.parametrize("signer, tx", [("bank", "jobs.Abort"), ("bank", "jobs.Fail"), ("bank_node", "jobs.Fail")])
def test_the_consumer_cannot_end_a_job_it_has_attested(w, signer, tx):
    """Before the lock: otherwise, seeing the provider's key tx in the mempool, it would end the job
    first in the same block, refunded, and read the key in the block."""
    consumer_attested(w)
    code, log = w.send(getattr(w, signer), tx, {"job": "j-1", "reason": "changed my mind"})
    assert code == Code.INVALID_STATE and "consumer has attested" in log, log
    assert w.state("jobs/j-1")["status"] == "running" and w.balance("bank") == 10_000 - 600
    assert with_key(w)[0] == Code.OK and w.state("jobs/j-1")["status"] == "completed"


def test_after_the_consumer_attested_a_provider_and_the_association_may_still_end_the_job(w):
    consumer_attested(w)
    assert w.send(w.assoc, "jobs.Abort", {"job": "j-1", "reason": "kill switch"})[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "aborted" and w.balance("bank") == 10_000


def test_the_consumer_may_still_fail_a_job_it_has_not_attested(w):
    assert attest(w, w.telco_node, records_used=50, records={ASSET: 50}, releases={"telco": KEY_HASH})[0] == Code.OK
    assert w.send(w.bank_node, "jobs.Fail", {"job": "j-1", "reason": "the provider's answer was malformed"})[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "failed" and w.balance("bank") == 10_000


def test_two_providers_one_key_with_the_last_attestation_the_other_released_later(tmp_path):
    from chainsim import register
    from services.common.identity import Identity

    w = World(tmp_path)
    energy, energy_node = Identity.generate("energy"), Identity.generate("energy.node")
    assert all(r.code == Code.OK for r in w.chain.block(register(w.chain, energy, ("provider",), energy_node)))
    key2 = os.urandom(32).hex()
    hash2 = hashlib.sha256(bytes.fromhex(key2)).hexdigest()
    inputs = []
    for owner, asset in ((w.telco, ASSET), (energy, "energy.meters")):
        assert w.send(owner, "assets.List", {"id": asset, "level": "L3", "operations": ["aggregation"],
                                             "commitment": COMMIT, "price": {"model": "fixed", "amount": 100},
                                             "metadata": example_metadata(asset)})[0] == Code.OK
        grant = f"g-{owner.account}"
        assert w.request(grant=grant, asset=asset, ops=("aggregation",))[0] == Code.OK
        assert w.send(owner, "access.Approve", {"id": grant})[0] == Code.OK
        inputs.append({"asset": asset, "grant": grant})
    assert w.send(w.bank, "jobs.Submit", {"id": "j-2", "type": "aggregation", "max_price": 200,
                                          "inputs": inputs})[0] == Code.OK
    both = {"telco": KEY_HASH, "energy": hash2}

    def body(asset=None, key=None):
        out = {"job": "j-2", "result_hash": RESULT, "records_used": 5, "releases": both,
               "input_commitments": {asset: COMMIT} if asset else {}}
        return out | ({"key": key} if key else {})

    assert w.send(energy_node, "jobs.Attest", body("energy.meters"))[0] == Code.OK
    assert w.send(w.bank_node, "jobs.Attest", body())[0] == Code.OK
    assert w.send(w.telco_node, "jobs.Attest", body(ASSET, KEY))[0] == Code.OK  # the last: locks, releases telco's
    job = w.state("jobs/j-2")
    assert job["status"] == "locked" and job["releases"] == {"telco": KEY}
    assert w.send(w.bank, "jobs.Abort", {"job": "j-2", "reason": "walk away"})[0] == Code.INVALID_STATE
    assert w.send(w.telco_node, "jobs.Release", {"job": "j-2", "key": KEY})[0] == Code.CONFLICT
    assert w.send(energy_node, "jobs.Release", {"job": "j-2", "key": key2})[0] == Code.OK
    job = w.state("jobs/j-2")
    assert job["status"] == "completed" and job["releases"] == {"telco": KEY, "energy": key2}
    assert w.balance("bank") == 10_000 - 200 and w.balance("telco") + w.balance("energy") > 0
