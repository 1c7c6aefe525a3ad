"""HE scoring bounded against model recovery (issue 17, part 2): the provider returns no more
scores than the rows the consumer declared, and a model under a privacy budget scores at most d
records per grant for its d weights."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.privacy import PrivacyBudget
from services.compute.jobtypes import he_scoring as he
from services.compute.jobtypes.base import ProtocolError
from services.compute.policy import InputPolicy, Policy, PolicyViolation, grant_runs

W, B = np.array([0.8, -1.2, 0.4]), 0.3


def test_slots_beyond_the_declared_rows_carry_no_score():
    ctx = he.new_context()
    pub = he.load_public(he.public_context(ctx))
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (he.SLOTS, 3))  # a consumer packs a whole batch of chosen rows ...
    [cts] = he.encrypt_batches(ctx, x)
    out = he.evaluate(pub, cts, W, B, he.sigmoid_poly(8), rows=3)  # ... but declares 3
    import tenseal as ts

    vec = ts.ckks_vector_from(ctx, out)
    vec.link_context(ctx)
    got = np.asarray(vec.decrypt())
    clear = he.clear_scores(x, W, B, he.sigmoid_poly(8))
    assert np.abs(got[:3] - clear[:3]).max() < 1e-3  # the declared rows are scored
    assert np.median(np.abs(got[3:] - clear[3:])) > 1_000  # the rest are flooded: no usable score


def test_a_narrow_ciphertext_is_refused():
    ctx = he.new_context()
    pub = he.load_public(he.public_context(ctx))
    import tenseal as ts

    narrow = [ts.ckks_vector(ctx, [1.0, 2.0]).serialize() for _ in range(3)]
    with pytest.raises(ProtocolError, match="full width"):
        he.evaluate(pub, narrow, W, B, he.sigmoid_poly(8), rows=2)


def test_a_budgeted_model_scores_at_most_d_records_per_grant():
    def policy(runs, budget=True):
        return Policy(inputs={"m": InputPolicy("m", privacy_budget=PrivacyBudget(epsilon_milli=1000) if budget else None,
                                               max_runs=runs)})
    policy(1).scoring_rows("m", 3, 3)  # d scores: the model stays undetermined
    policy(3).scoring_rows("m", 1, 3)
    with pytest.raises(PolicyViolation, match="at most 3 scores per grant"):
        policy(1).scoring_rows("m", 4, 3)  # d + 1 chosen rows would reveal every weight
    with pytest.raises(PolicyViolation):
        policy(2).scoring_rows("m", 2, 3)  # 2 runs of 2: 4 over the grant
    policy(10, budget=False).scoring_rows("m", 10_000, 3)  # no budget declared: unbounded, as before


def test_grant_runs_reads_the_job_s_grant():
    record = {"inputs": [{"asset": "a", "grant": "g1"}, {"asset": "b", "grant": "g2"}]}
    assert grant_runs(record, {"g1": {"max_runs": 7}, "g2": None}, "a") == 7
    assert grant_runs(record, {"g1": {"max_runs": 7}, "g2": None}, "b") == 1
    assert grant_runs({}, {}, "a") == 1
