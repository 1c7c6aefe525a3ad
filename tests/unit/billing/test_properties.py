"""Property tests (hypothesis) of the money rules.

Pure settlement: payouts add up to the amount charged, which never exceeds the max price; every
provider gets its exact share under the rounding rule. Whole chain: random sequences of
deposits, jobs, completions (directly, or locked and released, or settled by the provider's key
with the last attestation, or failed on disputed records),
failures, aborts and transfers keep credits conserved and escrow
non-negative (the invariants are checked after every block), and nobody is charged above the
max price it agreed."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction

from chainsim import Harness, register
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code
from services.consensus.jobs.settlement import settle

providers = st.sampled_from(["p1", "p2", "p3"])
ROWS = 40  # the per-record listing's declared row count
QUOTE = 700 + 37 * ROWS  # what a job on both listings must cover


@given(charges=st.dictionaries(st.sampled_from(["a1", "a2", "a3", "a4"]), st.integers(0, 10**9), min_size=1),
       owners=st.fixed_dictionaries({a: providers for a in ["a1", "a2", "a3", "a4"]}),
       max_price=st.integers(0, 10**10), fee=st.integers(0, 5000), compute=st.integers(0, 5000),
       consumer=st.sampled_from(["c1", "p1"]))
@settings(max_examples=500, deadline=None)
def test_settlement_is_exact(charges, owners, max_price, fee, compute, consumer):
    participants = sorted({consumer} | {owners[a] for a in charges})
    s = settle(charges, owners, max_price, participants, "assoc", fee, compute)
    wanted = sum(charges.values())
    assert s.total == min(wanted, max_price) == sum(s.payouts.values())
    assert all(v > 0 for v in s.payouts.values())
    if s.total == 0:
        return
    per_operator = s.total * compute // 10_000 // len(participants)
    pool = s.total - s.total * fee // 10_000 - per_operator * len(participants)
    for provider in {owners[a] for a in charges}:
        exact = sum(Fraction(pool * c, wanted) for a, c in charges.items() if owners[a] == provider)
        got = s.payouts.get(provider, 0) - per_operator
        assert exact - len(charges) < got <= exact  # floored per asset, never above the exact share
    assert s.association_fee >= s.total * fee // 10_000


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("deposit"), st.integers(1, 5_000)),
    st.tuples(st.just("submit"), st.integers(0, 4_000)),
    st.tuples(st.just("complete"), st.integers(0, 50)),
    st.tuples(st.just("locked"), st.integers(0, 50)),  # held back, then released; every 5th: records disputed
    st.tuples(st.just("keyed"), st.integers(0, 50)),  # the key with the last attestation; every 5th: disputed
    st.tuples(st.just("fail"), st.just(0)),
    st.tuples(st.just("abort"), st.just(0)),
    st.tuples(st.just("transfer"), st.integers(1, 2_000)),
), min_size=1, max_size=25)


@given(actions=ACTIONS)
@example(actions=[("submit", 3_000), ("keyed", 12), ("submit", 2_500), ("keyed", 5), ("submit", 2_200),
                  ("locked", 7)])  # each way of settling at least once: random lists seldom hold a running job
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
def test_random_money_sequences_conserve_credits(tmp_path_factory, actions):
    assoc = Identity.generate("association")
    h = Harness(tmp_path_factory.mktemp("p") / "c.sqlite", assoc, balances={"bank": 5_000})
    bank, bn = Identity.generate("bank"), Identity.generate("bank.node")
    telco, tn = Identity.generate("telco"), Identity.generate("telco.node")
    h.block(register(h, bank, ("consumer",), bn), register(h, telco, ("provider",), tn))
    h.block(h.tx(telco, "assets.List", {"id": "t.fixed", "level": "L2", "operations": ["aggregation"],
                                        "commitment": "ab" * 32, "price": {"model": "fixed", "amount": 700},
                                        "metadata": example_metadata("fixed")}),
            h.tx(telco, "assets.List", {"id": "t.rows", "level": "L2", "operations": ["aggregation"],
                                        "commitment": "ab" * 32, "price": {"model": "per_record", "amount": 37},
                                        "metadata": example_metadata("rows", row_count=ROWS)}))
    h.block(h.tx(bank, "access.Request", {"id": "g-1", "asset": "t.fixed", "operations": ["aggregation"],
                                          "purpose": "p", "expires_at": h.t0 + 10**6, "max_runs": 1000}),
            h.tx(bank, "access.Request", {"id": "g-2", "asset": "t.rows", "operations": ["aggregation"],
                                          "purpose": "p", "expires_at": h.t0 + 10**6, "max_runs": 1000}))
    h.block(h.tx(telco, "access.Approve", {"id": "g-1"}), h.tx(telco, "access.Approve", {"id": "g-2"}))
    supply = 5_000
    running: list[tuple[str, int]] = []
    for n, (action, value) in enumerate(actions):
        if action == "deposit":
            h.block(h.tx(assoc, "bank.Deposit", {"to": "bank", "amount": value, "reference": f"d{n}"}))
            supply += value
        elif action == "submit":
            before = bal(h, "bank")
            [r] = h.block(h.tx(bank, "jobs.Submit", {"id": f"job-{n}", "type": "aggregation", "max_price": value,
                                                     "inputs": [{"asset": "t.fixed", "grant": "g-1"},
                                                                {"asset": "t.rows", "grant": "g-2"}]}))
            # refused exactly when below the quote or over the balance
            assert (r.code == Code.OK) == (QUOTE <= value <= before), r.log
            if value < QUOTE:
                assert r.code == Code.PRICE_TOO_LOW and f"quote {QUOTE}" in r.log
            if r.code == Code.OK:
                running.append((f"job-{n}", value))
        elif action in ("complete", "locked", "keyed", "fail", "abort") and running:
            job, max_price = running.pop(0)
            before = bal(h, "bank") + max_price
            if action == "complete":
                h.block(h.tx(tn, "jobs.Attest", {"job": job, "result_hash": "cd" * 32, "records_used": value,
                                                 "input_commitments": {"t.fixed": "ab" * 32, "t.rows": "ab" * 32}}),
                        h.tx(bn, "jobs.Attest", {"job": job, "result_hash": "cd" * 32, "records_used": 0,
                                                 "input_commitments": {}}))
                settled = [e for e in h.db.events_after((h.height, -2, -1)) if e.type == "JobSettled"][0].data
                # per record up to the declared rows, and never above the agreed max (which covers it)
                assert settled["charged"] == 700 + 37 * min(value, ROWS) <= max_price
                assert bal(h, "bank") == before - settled["charged"] + settled["payouts"].get("bank", 0)
            elif action == "locked":
                key = hashlib.sha256(job.encode()).digest()
                common = {"job": job, "result_hash": "cd" * 32, "releases": {"telco": hashlib.sha256(key).hexdigest()}}
                seen = value + 1 if value % 5 == 0 else value  # the consumer's node saw another count
                h.block(h.tx(tn, "jobs.Attest", {**common, "records_used": value, "records": {"t.rows": value},
                                                 "input_commitments": {"t.fixed": "ab" * 32, "t.rows": "ab" * 32}}),
                        h.tx(bn, "jobs.Attest", {**common, "records_used": 0, "records": {"t.rows": seen},
                                                 "input_commitments": {}}))
                if seen != value:
                    assert json.loads(h.state()[f"jobs/{job}"])["status"] == "failed"
                    assert bal(h, "bank") == before  # unpaid: refunded in full
                else:
                    [r] = h.block(h.tx(bank, "jobs.Abort", {"job": job, "reason": "x"}))
                    assert r.code == Code.INVALID_STATE and bal(h, "bank") == before - max_price  # locked: no refund
                    h.block(h.tx(tn, "jobs.Release", {"job": job, "key": key.hex()}))
                    settled = [e for e in h.db.events_after((h.height, -2, -1)) if e.type == "JobSettled"][0].data
                    assert settled["charged"] == 700 + 37 * min(value, ROWS) <= max_price
                    assert bal(h, "bank") == before - settled["charged"] + settled["payouts"].get("bank", 0)
            elif action == "keyed":  # the 3-tx settlement: the consumer's node attests, then the provider's with its key
                key = hashlib.sha256(job.encode()).digest()
                common = {"job": job, "result_hash": "cd" * 32, "releases": {"telco": hashlib.sha256(key).hexdigest()}}
                seen = value + 1 if value % 5 == 0 else value
                h.block(h.tx(bn, "jobs.Attest", {**common, "records_used": 0, "records": {"t.rows": seen},
                                                 "input_commitments": {}}))
                [r] = h.block(h.tx(bank, "jobs.Abort", {"job": job, "reason": "x"}))
                assert r.code == Code.INVALID_STATE  # the consumer attested: it can no longer end the job
                [r] = h.block(h.tx(tn, "jobs.Attest", {**common, "records_used": value, "records": {"t.rows": value},
                                                       "input_commitments": {"t.fixed": "ab" * 32, "t.rows": "ab" * 32},
                                                       "key": key.hex()}))
                if seen != value:  # the key with a disagreeing attestation: refused whole, the job runs on
                    assert r.code == Code.INVALID_STATE and json.loads(h.state()[f"jobs/{job}"])["status"] == "running"
                    h.block(h.tx(assoc, "jobs.Abort", {"job": job, "reason": "x"}))
                    assert bal(h, "bank") == before  # refunded in full
                else:
                    assert r.code == Code.OK
                    settled = [e for e in h.db.events_after((h.height, -2, -1)) if e.type == "JobSettled"][0].data
                    assert settled["charged"] == 700 + 37 * min(value, ROWS) <= max_price
                    assert bal(h, "bank") == before - settled["charged"] + settled["payouts"].get("bank", 0)
            elif action == "fail":
                h.block(h.tx(tn, "jobs.Fail", {"job": job, "reason": "x"}))
                assert bal(h, "bank") == before  # refunded in full
            else:
                h.block(h.tx(assoc, "jobs.Abort", {"job": job, "reason": "x"}))
                assert bal(h, "bank") == before
        elif action == "transfer":
            have = bal(h, "bank")
            [r] = h.block(h.tx(bank, "bank.Transfer", {"to": "telco", "amount": value}))
            assert (r.code == Code.OK) == (value <= have)
        assert json.loads(h.state()["bank/supply"]) == supply  # and Harness.block checked every invariant


def bal(h: Harness, member: str) -> int:
    raw = h.state().get(f"bank/balance/{member}")
    return json.loads(raw) if raw else 0
