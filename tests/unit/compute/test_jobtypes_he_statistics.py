"""HE statistics (the ``statistics`` mode of ``he_scoring``): the CKKS kernel against numpy within
the stated error bound, the parameters, the arithmetic of the result, and the whole protocol
between two in-process parties over in-memory channels — the result against numpy, the minimum
group size refused, and neither party's values, ids or canaries in what it sends."""

from __future__ import annotations

import asyncio
import json
import struct

import numpy as np
import pytest

from services.compute import handshake as hs
from services.compute.policy import InputPolicy, Policy
from services.compute.jobtypes import he_statistics as st
from services.compute.jobtypes import job_type
from services.compute.jobtypes.base import JobRefused, ProtocolError

from test_jobtypes_aggregation import contexts, make_spec, mesh, release, run_member  # the in-memory channels

ts = pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def keys():
    ctx = st.new_context()
    return ctx, st.load_public(st.public_context(ctx))


def test_parameters_are_the_stated_128_bit_ones(keys):
    assert st.POLY_DEGREE == 16384 and sum(st.COEFF_MOD_BITS) == 220 <= 438 and st.SCALE_BITS == 50
    ctx, pub = keys
    assert not pub.is_private() and pub.has_galois_keys()
    with pytest.raises(ProtocolError, match="secret key"):
        st.load_public(ctx.serialize(save_secret_key=True))
    no_galois = ctx.serialize(save_secret_key=False, save_galois_keys=False)
    with pytest.raises(ProtocolError, match="other parameters"):
        st.load_public(no_galois)
    small = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 60])
    small.generate_galois_keys()
    with pytest.raises(ProtocolError, match="other parameters"):
        st.load_public(small.serialize(save_secret_key=False))
    with pytest.raises(ProtocolError):
        st.load_public(b"not a context")


@pytest.mark.parametrize("scale", [1e-2, 1.0, 5e3])
def test_the_kernel_matches_numpy_within_the_stated_bound_over_three_batches(keys, scale):
    ctx, pub = keys
    rng = np.random.default_rng(int(scale * 100))
    n = 2 * st.SLOTS + 700
    x = rng.gamma(2.0, 1.0, n) * scale
    sel = rng.random(n) < 0.4
    cts = st.encrypt_selection(ctx, sel.astype(float))
    assert len(cts) == 3
    for p in (1, 2):
        got = st.decrypt_first(ctx, st.evaluate(pub, cts, x, p))
        want = float((x[sel] ** p).sum())
        bound = st.error_bound(x, p)
        assert abs(got - want) < bound, (p, got - want, bound)
        assert bound < 1e-3 * abs(want)  # and the bound is tight enough to be useful


def test_the_answer_is_flooded_fresh_each_time(keys):
    """Two evaluations of the same inputs decrypt to different values in the low bits: P's noise, not C's."""
    ctx, pub = keys
    x = np.arange(1, 101, dtype=float)
    cts = st.encrypt_selection(ctx, (x % 2).astype(float))
    a, b = (st.decrypt_first(ctx, st.evaluate(pub, cts, x, 1)) for _ in range(2))
    assert a != b and abs(a - 2500) < st.error_bound(x, 1) and abs(b - 2500) < st.error_bound(x, 1)
    assert st.flood_bound(x) == 2.0 ** (st.FLOOD_BITS + 7)  # max 100 -> 2^7


def test_statistics_from_the_sums_and_the_range_check():
    x = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    out = st.statistics(list(st.STATS), len(x), float(x.sum()), float((x * x).sum()))
    assert out == {"count": 8, "sum": 40.0, "mean": 5.0, "variance": 4.0}
    assert st.statistics(["mean", "count"], 0, None, None) == {"count": 0, "mean": None}
    assert st.powers_for(["count"]) == [] and st.powers_for(["mean"]) == [1] and st.powers_for(["variance"]) == [1, 2]
    st.check_range(np.full(1000, 1e6), [1, 2])
    with pytest.raises(JobRefused, match="out of the range"):
        st.check_range(np.full(1000, 1e7), [1, 2])


def test_check_refuses_bad_params():
    job = job_type("he_scoring")
    ok = {"mode": "statistics", "dataset": "ids", "column": "balance"}
    job.check(make_spec("he_scoring", "bank", ["telco"], ok))
    for bad in ({**ok, "column": ""}, {"mode": "statistics", "column": "b"}, {**ok, "stats": ["median"]},
                {**ok, "stats": []}, {**ok, "select": 3}, {**ok, "mode": "other"}):
        with pytest.raises(JobRefused):
            job.check(make_spec("he_scoring", "bank", ["telco"], bad))


def _parties(n_provider=12_000, seed=9):
    rng = np.random.default_rng(seed)
    ids = [f"C-{i:06d}" for i in range(n_provider)]
    balance = rng.normal(500.0, 120.0, n_provider).round(2)
    balance[5] = np.nan  # a row without a value is skipped
    provider = {"customer_id": ids, "balance": ["" if v != v else f"{v:.2f}" for v in balance],
                "note": ["CANARY-PROV"] * n_provider}
    wanted = rng.choice(n_provider, n_provider // 4, replace=False)
    mine = [ids[i] for i in wanted] + [f"CANARY-CONS-{i}" for i in range(40)]  # 40 ids P does not hold
    flagged = ["1" if i % 3 else "0" for i in range(len(mine))]
    consumer = {"customer_id": mine, "flagged": flagged}
    chosen = {mine[i] for i in range(len(mine)) if flagged[i] == "1"}
    selected = np.array([i in chosen for i in ids]) & ~np.isnan(balance)
    return provider, consumer, balance, selected


async def _run(spec, data):
    chans, sent, _ = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, data, results)
    for ref in spec.inputs:  # each provider's listing declares the id column a join key
        ctxs[ref.provider].policy = Policy(inputs={ref.asset: InputPolicy(ref.asset, ref.min_group_size,
                                                                          frozenset({"customer_id"}))})
    job = job_type("he_scoring")
    outs = await asyncio.gather(*(run_member(job, c, chans[m]) for m, c in ctxs.items()), return_exceptions=True)
    if not any(isinstance(o, BaseException) for o in outs):
        await release(dict(zip(ctxs, outs)), results, ctxs)
    return dict(zip(ctxs, outs)), results, sent


async def test_statistics_end_to_end_in_process_against_numpy():
    provider, consumer, balance, selected = _parties()
    params = {"mode": "statistics", "dataset": "mine", "key": "customer_id", "select": "flagged",
              "column": "balance"}
    spec = make_spec("he_scoring", "bank", ["telco"], params, min_group=10)
    outs, results, sent = await _run(spec, {"mine": consumer, "telco.data": provider})
    assert not any(isinstance(o, BaseException) for o in outs.values()), outs
    assert outs["bank"].result_hash == outs["telco"].result_hash
    assert set(results) == {"bank"}
    got = json.loads(results["bank"])["statistics"]
    want = st.clear_statistics(balance, selected)
    x = balance[~np.isnan(balance)]
    e1, e2 = st.error_bound(x, 1), st.error_bound(x, 2)
    assert got["count"] == want["count"] == int(selected.sum())
    assert abs(got["sum"] - want["sum"]) < e1
    assert abs(got["mean"] - want["mean"]) < e1 / want["count"]
    var_bound = (e2 + 2 * abs(want["mean"]) * e1) / want["count"] + (e1 / want["count"]) ** 2
    assert abs(got["variance"] - want["variance"]) < var_bound, (got["variance"] - want["variance"], var_bound)
    assert outs["bank"].records_used == consumer["flagged"].count("1")  # |X|
    assert outs["telco"].records_used == len(x)  # n
    # what each side sent: no value, id or canary in the clear
    to_consumer = b"".join(sent["telco"])
    for v in filter(None, provider["balance"][:200]):
        assert v.encode() not in to_consumer
    for v in balance[:50]:
        assert struct.pack("<d", v) not in to_consumer
    for ident in provider["customer_id"][:200]:
        assert ident.encode() not in to_consumer
    assert b"CANARY" not in to_consumer
    to_provider = b"".join(sent["bank"])
    assert b"CANARY" not in to_provider and not any(i.encode() in to_provider for i in consumer["customer_id"][:200])
    assert {hs.decode(f)[0] for f in sent["telco"]} <= {"start", "yb", "yb_done", "xab", "xab_done", "stats", "held",
                                                         "finished", "end", "end_ack"}


async def test_a_selection_below_the_minimum_group_size_is_refused_before_any_ciphertext():
    provider, consumer, _, selected = _parties(n_provider=2000, seed=4)
    params = {"mode": "statistics", "dataset": "mine", "key": "customer_id", "select": "flagged",
              "column": "balance"}
    spec = make_spec("he_scoring", "bank", ["telco"], params, min_group=int(selected.sum()) + 1)
    outs, results, sent = await _run(spec, {"mine": consumer, "telco.data": provider})
    assert all(isinstance(o, JobRefused) and "minimum group size" in str(o) for o in outs.values()), outs
    assert results == {}
    kinds = [hs.decode(f)[0] for f in sent["bank"]]
    assert "abort" in kinds and "context" not in kinds and "sel" not in kinds
    assert "stats" not in [hs.decode(f)[0] for f in sent["telco"]]
