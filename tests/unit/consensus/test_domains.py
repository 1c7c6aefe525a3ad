"""The domain rules end to end through FinalizeBlock/Commit, invariants checked after every block."""

from __future__ import annotations

import json

import pytest
from chainsim import Harness, register

from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code

COMMIT = "ab" * 32
RESULT = "cd" * 32


class World:
    def __init__(self, tmp_path):
        self.assoc = Identity.generate("association")
        self.bank, self.bank_node = Identity.generate("bank"), Identity.generate("bank.node")
        self.telco, self.telco_node = Identity.generate("telco"), Identity.generate("telco.node")
        self.chain = Harness(tmp_path / "chain.sqlite", self.assoc, balances={"bank": 10_000})
        ok(self.chain.block(register(self.chain, self.bank, ("consumer",), self.bank_node),
                            register(self.chain, self.telco, ("provider",), self.telco_node)))

    def send(self, who: Identity, type_: str, payload: dict) -> tuple[int, str]:
        [result] = self.chain.block(self.chain.tx(who, type_, payload))
        return result.code, result.log

    def list(self, asset="telco.subscribers", level="L3", ops=("psi",), price=None, **extra):
        listing = {"id": asset, "level": level, "operations": list(ops), "commitment": COMMIT,
                   "price": price or {"model": "fixed", "amount": 100}, "metadata": example_metadata("Subscribers"), **extra}
        return self.send(self.telco, "assets.List", listing)

    def request(self, grant="g-1", asset="telco.subscribers", ops=("psi",), max_runs=5, expires_in=3600):
        return self.send(self.bank, "access.Request", {
            "id": grant, "asset": asset, "operations": list(ops), "purpose": "joint marketing",
            "expires_at": self.chain.t0 + expires_in, "max_runs": max_runs})

    def submit(self, job="j-1", grant="g-1", asset="telco.subscribers", type_="psi", max_price=150, timeout_s=600):
        return self.send(self.bank, "jobs.Submit", {"id": job, "type": type_, "max_price": max_price,
                                                    "inputs": [{"asset": asset, "grant": grant}], "timeout_s": timeout_s})

    def attest(self, node: Identity, job="j-1", commitments=None, result=RESULT, records=10):
        if commitments is None:
            commitments = {"telco.subscribers": COMMIT} if node is self.telco_node else {}
        return self.send(node, "jobs.Attest", {"job": job, "result_hash": result, "records_used": records,
                                               "input_commitments": commitments})

    def state(self, key: str):
        raw = self.chain.state().get(key)
        return json.loads(raw) if raw is not None else None

    def balance(self, member: str) -> int:
        return self.state(f"bank/balance/{member}") or 0

    def granted(self):
        assert self.list()[0] == Code.OK
        assert self.request()[0] == Code.OK
        assert self.send(self.telco, "access.Approve", {"id": "g-1"})[0] == Code.OK


def ok(results):
    assert all(r.code == Code.OK for r in results), [(r.code, r.log) for r in results]


@pytest.fixture
def w(tmp_path):
    return World(tmp_path)


def test_psi_job_from_listing_to_settlement(w):
    assert w.list() == (Code.OK, "")
    assert w.request() == (Code.OK, "")
    assert w.state("access/g-1")["status"] == "pending"
    assert w.send(w.telco, "access.Approve", {"id": "g-1"})[0] == Code.OK
    assert w.state("access/g-1")["status"] == "granted"
    assert w.submit() == (Code.OK, "")
    assert w.balance("bank") == 10_000 - 150 and w.state("bank/escrow/j-1")["amount"] == 150
    assert w.attest(w.telco_node)[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "running"
    assert w.attest(w.bank_node)[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "completed" and job["result_hash"] == RESULT
    # fixed 100: association fee 2% = 2, telco 98; the 50 left of the 150 escrow is refunded
    assert (w.balance("bank"), w.balance("telco"), w.balance("association")) == (9_900, 98, 2)
    assert w.state("bank/escrow/j-1") is None
    assert w.state("access/g-1")["runs_used"] == 1


def test_max_price_must_cover_the_quote_and_the_refusal_says_the_quote(w):
    """max_price 0 once ran any priced job for nothing: the chain now checks the quote itself."""
    w.granted()  # fixed 100
    code, log = w.submit(max_price=0)
    assert code == Code.PRICE_TOO_LOW and "quote 100" in log and "telco.subscribers 100" in log
    assert w.submit(max_price=99)[0] == Code.PRICE_TOO_LOW
    assert w.balance("bank") == 10_000 and w.state("access/g-1")["runs_used"] == 0  # nothing held, no run spent
    assert w.submit(max_price=100)[0] == Code.OK


def test_per_record_charges_stop_at_the_declared_row_count(w):
    """A provider can no longer charge whatever records_used it likes: at most the row count its
    listing declared, which the consumer's max_price had to cover."""
    w.list(price={"model": "per_record", "amount": 3}, metadata=example_metadata("Subscribers", row_count=200))
    w.request()
    w.send(w.telco, "access.Approve", {"id": "g-1"})
    assert quote(w, "telco.subscribers") == 600 and quote(w, "telco.subscribers", 50) == 150
    code, log = w.submit(max_price=500)
    assert code == Code.PRICE_TOO_LOW and "quote 600" in log
    assert w.submit(max_price=700)[0] == Code.OK
    w.attest(w.telco_node, records=1_000_000)  # inflated
    w.attest(w.bank_node)
    # 600 charged (200 rows x 3): association 2% = 12; compute 1% = 6 -> 3 per node; telco's pool 582.
    assert (w.balance("bank"), w.balance("telco"), w.balance("association")) == (10_000 - 600 + 3, 582 + 3, 12)


def test_classification_policy_on_requests(w):
    assert w.list(ops=("raw_download", "psi"))[0] == Code.OK
    code, log = w.request(ops=("raw_download",))
    assert code == Code.UNAUTHORIZED and "raw_download is never allowed on L3" in log
    assert w.list("telco.core", level="L4", ops=("aggregation", "psi"))[0] == Code.OK
    assert w.request("g-psi", "telco.core", ops=("psi",))[0] == Code.UNAUTHORIZED
    assert w.request("g-agg", "telco.core", ops=("aggregation",))[0] == Code.OK
    assert w.send(w.telco, "access.Approve", {"id": "g-agg"})[0] == Code.OK
    assert w.state("access/g-agg")["status"] == "pending"  # L4 needs the association too
    assert w.send(w.assoc, "access.Approve", {"id": "g-agg"})[0] == Code.OK
    assert w.state("access/g-agg")["status"] == "granted"
    assert w.list("telco.open", level="L1", ops=("raw_download",))[0] == Code.OK
    assert w.request("g-open", "telco.open", ops=("raw_download",))[0] == Code.OK
    assert w.state("access/g-open")["status"] == "granted"  # L1: no approval
    assert w.request("g-x", "telco.subscribers", ops=("aggregation",))[0] == Code.UNAUTHORIZED  # not offered


def test_only_owner_changes_a_listing_and_history_is_kept(w):
    w.list()
    listing = {"id": "telco.subscribers", "level": "L3", "operations": ["psi"], "commitment": "ef" * 32,
               "price": {"model": "fixed", "amount": 120}, "metadata": example_metadata("Subscribers v2")}
    before = w.state("assets/telco.subscribers")
    assert w.send(w.bank, "assets.Update", listing)[0] == Code.UNAUTHORIZED
    assert w.state("assets/telco.subscribers") == before
    assert w.send(w.telco, "assets.Update", listing)[0] == Code.OK
    assert w.state("assets/telco.subscribers")["version"] == 2
    assert w.state("asset-versions/telco.subscribers/00000001")["commitment"] == COMMIT
    assert w.state("asset-versions/telco.subscribers/00000002")["commitment"] == "ef" * 32


def test_delisting_revokes_grants_and_aborts_jobs_with_refund(w):
    w.granted()
    w.submit()
    assert w.send(w.telco, "assets.Delist", {"id": "telco.subscribers", "reason": "retired"})[0] == Code.OK
    assert w.state("access/g-1")["status"] == "revoked"
    assert w.state("jobs/j-1")["status"] == "aborted"
    assert w.balance("bank") == 10_000
    assert w.state("asset-versions/telco.subscribers/00000001") is not None  # history stays


def test_overdrawn_escrow_is_rejected_in_checktx_without_state_change(w):
    w.granted()
    before = w.chain.state()
    tx = w.chain.tx(w.bank, "jobs.Submit", {"id": "j-big", "type": "psi", "max_price": 10_001, "timeout_s": 600,
                                            "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})
    resp = w.chain.check(tx)
    assert resp.code == Code.INSUFFICIENT_FUNDS and "10001 needed" in resp.log
    assert w.chain.state() == before


def test_attestations_cannot_be_forged_duplicated_or_mismatched(w):
    w.granted()
    w.submit()
    outsider = Identity.generate("other")
    assert w.attest(outsider)[0] == Code.UNKNOWN_SIGNER
    assert w.send(w.telco, "jobs.Attest", {"job": "j-1", "result_hash": RESULT, "records_used": 1,
                                           "input_commitments": {}})[0] == Code.UNAUTHORIZED  # member key, not node
    assert w.attest(w.telco_node, commitments={"telco.subscribers": "00" * 32})[0] == Code.INVALID_PAYLOAD
    assert w.attest(w.telco_node)[0] == Code.OK
    assert w.attest(w.telco_node)[0] == Code.CONFLICT
    assert w.attest(w.bank_node, result="ee" * 32)[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "failed" and "different results" in job["ended_reason"]
    assert w.balance("bank") == 10_000 and w.balance("telco") == 0


def test_a_providers_node_may_abort_its_job_and_the_consumers_node_may_not(w):
    w.granted()
    w.submit()
    abort = {"job": "j-1", "reason": "telco's policy: column x is not a join key of telco.subscribers"}
    assert w.send(w.bank_node, "jobs.Abort", abort) == (Code.UNAUTHORIZED,
                                                         "only the compute node of an input's owner may abort a job")
    assert w.send(w.telco_node, "jobs.Abort", abort)[0] == Code.OK
    job = w.state("jobs/j-1")
    assert job["status"] == "aborted" and job["ended_reason"] == abort["reason"]
    assert w.balance("bank") == 10_000


def test_suspending_a_member_aborts_its_running_jobs(w):
    w.granted()
    w.submit()
    assert w.send(w.assoc, "members.Suspend", {"member": "telco", "reason": "investigation"})[0] == Code.OK
    assert w.state("jobs/j-1")["status"] == "aborted"
    assert w.balance("bank") == 10_000
    assert w.attest(w.telco_node)[0] == Code.SUSPENDED_SIGNER


def test_job_times_out_and_grant_expires_by_block_time(w):
    w.granted()
    w.submit(timeout_s=10)
    w.chain.block()
    w.chain.block()
    job = w.state("jobs/j-1")
    assert job["status"] == "failed" and job["ended_reason"] == "timed out"
    assert w.balance("bank") == 10_000
    w.chain.t0 += 100_000  # block time jumps past the grant's expiry
    w.chain.block()
    assert w.state("access/g-1")["status"] == "expired"
    assert w.submit("j-2")[0] == Code.UNAUTHORIZED


def test_max_runs_limits_jobs(w):
    w.list()
    w.request(max_runs=1)
    w.send(w.telco, "access.Approve", {"id": "g-1"})
    assert w.submit("j-1")[0] == Code.OK
    assert w.submit("j-2")[0] == Code.UNAUTHORIZED


def test_credits_enter_and_leave_only_through_the_association(w):
    assert w.send(w.bank, "bank.Withdraw", {"member": "bank", "amount": 10, "reference": "x"})[0] == Code.UNAUTHORIZED
    assert w.send(w.bank, "bank.Deposit", {"to": "bank", "amount": 10, "reference": "x"})[0] == Code.UNAUTHORIZED
    assert w.send(w.assoc, "bank.Withdraw", {"member": "bank", "amount": 1_000, "reference": "wire-7"})[0] == Code.OK
    assert w.state("bank/supply") == 9_000
    assert w.send(w.bank, "bank.Transfer", {"to": "telco", "amount": 500})[0] == Code.OK
    assert (w.balance("bank"), w.balance("telco")) == (8_500, 500)
    assert w.send(w.bank, "bank.Transfer", {"to": "telco", "amount": 9_000})[0] == Code.INSUFFICIENT_FUNDS


def test_mixed_workload_covers_every_tx_type_and_succeeds(tmp_path):
    from workload import mixed_workload  # tests/ is on the path through its conftest

    from services.consensus.app import HANDLERS

    assoc = Identity.generate("association")
    chain = Harness(tmp_path / "c.sqlite", assoc)
    seen = set()
    for who, type_, payload in mixed_workload(assoc, members=4, now=chain.t0):
        [result] = chain.block(chain.tx(who, type_, payload))
        assert result.code == Code.OK, (type_, result.log)
        seen.add(type_)
    assert seen == set(HANDLERS)


def quote(w, asset: str, records: int | None = None) -> int:
    """``/quote/<asset>``: what max_price must cover; with ``records``, the charge for that many."""
    from tendermint.abci import types_pb2 as abci

    resp = w.chain.app.query(abci.RequestQuery(path=f"/quote/{asset}" + ("" if records is None else f"/{records}")))
    return json.loads(resp.value)


def job_price(w, job: str) -> int:
    return w.state(f"jobs/{job}")["inputs"][0]["price"]["amount"]


def test_dynamic_price_rises_with_demand_and_falls_back(w):
    w.list(price={"model": "dynamic", "amount": 100})
    w.request(max_runs=100)
    w.send(w.telco, "access.Approve", {"id": "g-1"})
    assert quote(w, "telco.subscribers") == 100
    charged = []
    for n in range(5):
        assert w.submit(f"j-{n}", max_price=1_000)[0] == Code.OK
        charged.append(job_price(w, f"j-{n}"))
        assert quote(w, "telco.subscribers") > charged[-1]  # the quote already includes this job's demand
    assert charged == sorted(charged) and charged[0] == 100 and charged[-1] > 130
    w.chain.t0 += 10 * 3600  # ten half-lives later
    w.chain.block()
    assert quote(w, "telco.subscribers") == 100


def test_a_subscription_is_bought_only_at_its_full_price(w):
    """One job with a tiny max_price once bought the whole period: its max_price must now cover
    the pass, unless the grant's pass lasts past the job's deadline."""
    w.list(price={"model": "subscription", "amount": 1_000, "period_s": 86_400})
    w.request(max_runs=100)
    w.send(w.telco, "access.Approve", {"id": "g-1"})
    code, log = w.submit("j-cheap", max_price=1)
    assert code == Code.PRICE_TOO_LOW and "quote 1000" in log
    w.submit("j-1", max_price=1_000)
    w.attest(w.telco_node, job="j-1")
    w.attest(w.bank_node, job="j-1")  # buys the pass, at its price
    assert w.state("jobs/j-1")["status"] == "completed"
    assert w.submit("j-2", max_price=0, timeout_s=600)[0] == Code.OK  # inside the pass: covered by it
    assert w.submit("j-3", max_price=0, timeout_s=86_400)[0] == Code.PRICE_TOO_LOW  # could end after it


def test_subscription_pass_is_bought_by_the_first_completed_job_and_covers_the_period(w):
    w.list(price={"model": "subscription", "amount": 1_000, "period_s": 86_400})
    w.request(max_runs=100)
    w.send(w.telco, "access.Approve", {"id": "g-1"})
    assert quote(w, "telco.subscribers") == 1_000
    for job in ("j-1", "j-2", "j-3"):
        w.submit(job, max_price=2_000)
    assert w.send(w.telco_node, "jobs.Fail", {"job": "j-1", "reason": "x"})[0] == Code.OK  # refunded in full
    w.attest(w.telco_node, job="j-2")
    w.attest(w.bank_node, job="j-2")  # completes: buys the pass
    w.attest(w.telco_node, job="j-3")
    w.attest(w.bank_node, job="j-3")  # completes inside the pass: free
    settled = {e.data["job"]: e.data["charged"] for e in w.chain.db.events_after((0, -2, -1)) if e.type == "JobSettled"}
    assert settled == {"j-1": 0, "j-2": 1_000, "j-3": 0}
    assert w.state("access/g-1")["paid_until"] > w.chain.t0
