"""HE scoring between two in-process parties: CKKS scores against the clear polynomial, what the
provider receives (no secret key, no feature in the clear) and what the consumer receives (no weight)."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest

from services.compute import handshake as hs
from services.compute.jobtypes import job_type
from services.compute.jobtypes import he_scoring as he
from services.compute.jobtypes.base import JobRefused
from test_jobtypes_aggregation import contexts, make_spec, mesh, release, run_member

ts = pytest.importorskip("tenseal")
ERROR_BOUND = 1e-3  # |decrypted - clear polynomial|, for |z| <= 8 (measured ~1e-6 at scale 2^40)


def test_sigmoid_polynomial_fits_the_logistic_on_its_range():
    c0, c1, c3 = he.sigmoid_poly(8)
    z = np.linspace(-8, 8, 1001)
    err = np.abs(c0 + c1 * z + c3 * z ** 3 - 1 / (1 + np.exp(-z))).max()
    assert abs(c0 - 0.5) < 1e-9 and err < 0.115
    z = np.linspace(-4, 4, 1001)
    c0, c1, c3 = he.sigmoid_poly(4)
    assert np.abs(c0 + c1 * z + c3 * z ** 3 - 1 / (1 + np.exp(-z))).max() < 0.039


def test_parameters_are_the_stated_128_bit_ones():
    assert he.POLY_DEGREE == 16384 and sum(he.COEFF_MOD_BITS) == 240 <= 438
    ctx = he.new_context()
    pub = he.public_context(ctx)
    assert not he.load_public(pub).is_private()


def test_the_kernel_matches_the_clear_computation_over_two_batches():
    rng = np.random.default_rng(3)
    n, d = he.SLOTS + 100, 4
    x = rng.normal(0, 1, (n, d))
    w, b = rng.normal(0, 0.8, d), 0.3
    coeffs = he.sigmoid_poly(8)
    ctx = he.new_context()
    pub = he.load_public(he.public_context(ctx))
    batches = he.encrypt_batches(ctx, x)
    assert len(batches) == 2 and all(len(bt) == d for bt in batches)
    got = np.concatenate([he.decrypt(ctx, he.evaluate(pub, bt, w, b, coeffs), min(he.SLOTS, n - i * he.SLOTS))
                          for i, bt in enumerate(batches)])
    assert np.abs(got - he.clear_scores(x, w, b, coeffs)).max() < ERROR_BOUND


def test_check_refuses_bad_shapes():
    job = job_type("he_scoring")
    ok = {"dataset": "apps", "features": ["a", "b"]}
    job.check(make_spec("he_scoring", "bank", ["model"], ok))
    for bad in ({"features": ["a"]}, {"dataset": "apps"}, {"dataset": "apps", "features": []},
                {"dataset": "apps", "features": ["a"], "sigmoid_range": 100}):
        with pytest.raises(JobRefused):
            job.check(make_spec("he_scoring", "bank", ["model"], bad))
    with pytest.raises(JobRefused):
        job.check(make_spec("he_scoring", "bank", ["m1", "m2"], ok))


async def test_he_scoring_end_to_end_in_process():
    rng = np.random.default_rng(5)
    n, feats = 300, ["income", "debt", "age"]
    x = rng.normal(0, 1, (n, 3))
    w = np.array([0.9, -1.2, 0.4])
    apps = {f: [f"{v:.6f}" for v in x[:, j]] for j, f in enumerate(feats)}
    apps["id"] = [f"CANARY-APP-{i}" for i in range(n)]
    model = {"feature": feats + ["__intercept__", "unused"], "weight": ["0.9", "-1.2", "0.4", "-0.25", "7.77"]}
    spec = make_spec("he_scoring", "bank", ["scorer"], {"dataset": "apps", "features": feats, "id": "id"})
    chans, sent, _ = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, {"apps": apps, "scorer.data": model}, results)
    job = job_type("he_scoring")
    outs = await asyncio.gather(*(run_member(job, c, chans[m]) for m, c in ctxs.items()))
    assert outs[0].result_hash == outs[1].result_hash
    await release(dict(zip(ctxs, outs)), results, ctxs)
    result = json.loads(results["bank"])
    xc = np.array([[float(v) for v in apps[f]] for f in feats]).T
    clear = he.clear_scores(xc, w, -0.25, he.sigmoid_poly(8))
    assert result["ids"] == apps["id"]
    assert np.abs(np.array(result["scores"]) - clear).max() < ERROR_BOUND
    assert set(results) == {"bank"}
    # the provider received no feature or id in the clear; the consumer no weight
    to_provider = b"".join(sent["bank"])
    for v in apps["income"][:20] + apps["id"][:20]:
        assert v.encode() not in to_provider
    for v in x[:5, 0]:
        assert struct.pack("<d", v) not in to_provider
    to_consumer = b"".join(sent["scorer"])
    headers = " ".join(json.dumps(hs.decode(f)[1]) for f in sent["scorer"])
    for wv in (0.9, -1.2, 0.4, -0.25, 7.77):
        # a weight's 8 bytes anywhere (a chance match in the ciphertexts is ~1e-13), its text in the frames'
        # JSON: a 3-byte text such as b"0.4" turns up by chance in random ciphertext bytes (one CI run had it)
        assert struct.pack("<d", wv) not in to_consumer and str(wv) not in headers
    assert {hs.decode(f)[0] for f in sent["scorer"]} <= {"score", "scores_done", "finished", "end", "end_ack"}
