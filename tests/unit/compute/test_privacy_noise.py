"""The DP noise a provider's node adds under a listing's privacy budget (services/compute/dp.py,
aggregation.noise, he_statistics' shifted evaluation) and the policy that decides it."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.privacy import PrivacyBudget
from services.compute import dp
from services.compute.jobtypes import aggregation as agg
from services.compute.jobtypes import he_statistics as hs
from services.compute.policy import InputPolicy, Policy, PolicyViolation

BUDGETED = Policy(inputs={"p.credit": InputPolicy("p.credit", 10, privacy_budget=PrivacyBudget(epsilon_milli=3000))})


def test_opendp_laplace_has_the_scale_sensitivity_over_epsilon():
    out = dp.laplace(np.zeros(40_000), 5.0, 0.5)  # scale 10: E|X| = 10, Var = 200
    assert abs(float(np.abs(out).mean()) - 10.0) < 0.3
    assert abs(float(out.mean())) < 0.3
    assert len(set(out.tolist())) > 39_000  # fresh noise per slot
    with pytest.raises(ValueError):
        dp.laplace([0.0], 1.0, 0.0)
    with pytest.raises(ValueError):
        dp.laplace([0.0], float("inf"), 1.0)


def test_the_policy_gives_the_charged_epsilon_only_under_a_budget():
    assert BUDGETED.epsilon("p.credit", {}) == 1.0  # the chain's default charge
    assert BUDGETED.epsilon("p.credit", {"epsilon_milli": 250}) == 0.25
    assert Policy().epsilon("p.credit", {"epsilon_milli": 250}) is None  # no budget: exact results
    for bad in (0, -5, "1000", True, 10**7, None):
        with pytest.raises(PolicyViolation):
            BUDGETED.epsilon("p.credit", {"epsilon_milli": bad})


@pytest.mark.parametrize("bounds", [None, {}, {"amount": [5, 5]}, {"amount": [10, 0]}, {"amount": [0]},
                                    {"amount": ["0", "9"]}, {"amount": [0, 10**13]}, {"amount": [False, 9]},
                                    {"amount": [0, float("nan")]}, {"other": [0, 9]}, [0, 9], "0..9"])
def test_a_noisy_sum_needs_sane_bounds_from_the_params(bounds):
    with pytest.raises(PolicyViolation, match="params.bounds.amount"):
        BUDGETED.bounds("p.credit", {"bounds": bounds}, "amount")


def test_bounds_and_sensitivities():
    assert BUDGETED.bounds("p.credit", {"bounds": {"amount": [-20, 10]}}, "amount") == (-20.0, 10.0)
    assert dp.sensitivities(-20, 10) == (20.0, 400.0)


def test_an_aggregate_is_clamped_and_its_noise_has_the_stated_scale_per_kind():
    plan = agg.Plan({"columns": ["amount"], "histogram": {"edges": [0, 50, 100]}, "group_by": "g",
                     "groups": [str(i) for i in range(2000)]})
    ring, rows = agg._prepare(plan, {"amount": [-5.0, 70.0, 1e9, None], "g": ["0", "0", "1", "1"]}, None,
                              {"amount": (0.0, 100.0)})
    local = agg.decode(ring).reshape(2000, 1, plan.slots)
    assert rows == 4 and local[0, 0, :3].tolist() == [2, 70, 4900] and local[1, 0, :3].tolist() == [1, 100, 10_000]
    eps = 2.0
    noise = agg.noise(plan, eps, {"amount": (0.0, 100.0)}).reshape(2000, 1, plan.slots)
    each = eps / 4  # one column, four kinds of slot: count, sum, sum of squares, histogram
    for slot, sens in ((0, 1.0), (1, 100.0), (2, 10_000.0)):
        assert abs(float(np.abs(noise[:, 0, slot]).mean()) / (sens / each) - 1) < 0.1, slot
    assert abs(float(np.abs(noise[:, 0, 3:]).mean()) / (1 / each) - 1) < 0.1


def test_a_noisy_aggregate_result_keeps_counts_non_negative():
    plan = agg.Plan({"columns": ["amount"], "histogram": {"edges": [0, 1]}})
    out = agg.result_of(plan, np.array([-3.4, 10.0, 100.0, -2.0]), 2)
    assert out["columns"]["amount"]["count"] == 0 and out["columns"]["amount"]["mean"] is None
    assert out["columns"]["amount"]["histogram"]["counts"] == [0]


def test_the_statistics_noise_is_added_to_the_encrypted_total():
    he = hs.new_context()
    pub = hs.load_public(hs.public_context(he))
    x = np.arange(1.0, 101.0)
    s = np.zeros(100)
    s[:40] = 1
    cts = hs.encrypt_selection(he, s)
    exact, bound = float(x[:40].sum()), hs.error_bound(x, 1)
    assert abs(hs.decrypt_first(he, hs.evaluate(pub, cts, x, 1, shift=1234.5)) - (exact + 1234.5)) < bound
    assert abs(hs.decrypt_first(he, hs.evaluate(pub, cts, x, 1)) - exact) < bound
