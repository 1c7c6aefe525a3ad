"""Secure aggregation aligned on a private key (``align_on``): the pure steps of the multi-party
PSI (normalisation, tags, intersection, row positions), and the whole protocol between
in-process parties over in-memory channels checked against numpy in the clear over the keys
every provider holds; the minimum group size; and what each party sees: a key held by one
provider reaches no one in any form, and no provider ever sees a full tag it did not make."""

from __future__ import annotations

import asyncio
import hashlib
import json

import numpy as np
import pytest

from services.compute import handshake as hs
from services.compute import psi_kernel as kernel
from services.compute.jobtypes import aggregation as agg
from services.compute.jobtypes import job_type
from services.compute.jobtypes.base import JobRefused, PeerLost
from services.compute.jobtypes.psi import MATCH, normalise_keys
from test_jobtypes_aggregation import contexts, mesh, release, run_member
from test_jobtypes_aggregation import make_spec as shared_spec


# -- in-memory parties: the job-type tests' channels, every frame on one wire ----------------------------

def make_spec(providers, params, min_group=1, consumer="zc"):
    return shared_spec("aggregation", consumer, providers, params, min_group)


async def run_job(spec, data, drop=None):
    """Every party's outcome (or exception), the consumer's result, and every frame (src, dst, kind, frame)."""
    wire, results = [], {}
    chans, _, queues = mesh(spec.participants, wire)
    ctxs = contexts(spec, chans, data, results, batch=7)
    members = [m for m in spec.participants if m != drop]
    if drop:
        for other in members:
            await queues[drop, other].put(None)
    job = job_type("aggregation")
    got = await asyncio.wait_for(asyncio.gather(*(run_member(job, ctxs[m], chans[m]) for m in members),
                                                return_exceptions=True), 60)
    if not any(isinstance(o, BaseException) for o in got):
        await release(dict(zip(members, got)), results, ctxs)
    return dict(zip(members, got)), {m: json.loads(r) for m, r in results.items()}, wire


# -- data and the clear computation ---------------------------------------------------------------------

PROVIDERS = ["p1", "p2", "p3"]
CANARY = "CANARY-ONLY-P2"


def hospital(seed, ids):
    """Rows keyed by patient id: several rows per id, a null key, a null value; region is a public column."""
    rng = np.random.default_rng(seed)
    rows = [i for i in ids for _ in range(int(rng.integers(1, 4)))]
    n = len(rows)
    cost = [f"{v:.2f}" for v in rng.gamma(2.0, 300.0, n)]
    cost[0] = ""
    region = list(rng.choice(["north", "south"], n))
    pid = [f" {r} " if j % 5 == 0 else r for j, r in enumerate(rows)]  # surrounding spaces: the same key
    pid.append(None)
    cost.append("5")
    region.append("north")
    return {"pid": pid, "cost": cost, "region": region}


def datasets():
    shared = [f"id-{i:03d}" for i in range(40)]  # every provider holds these
    ids = {"p1": shared + [f"id-{i:03d}" for i in range(40, 60)],         # 40..59 also with p2
           "p2": shared + [f"id-{i:03d}" for i in range(50, 70)] + [CANARY],
           "p3": shared + [f"id-{i:03d}" for i in range(100, 130)]}
    return {f"{p}.data": hospital(i, ids[p]) for i, p in enumerate(PROVIDERS)}


def clear_rows(data):
    """(key, cost, region) of every row whose key every provider holds and whose cost is not null."""
    keysets = [{str(k).strip() for k in d["pid"] if k is not None} for d in data.values()]
    common = set.intersection(*keysets)
    rows = [(str(k).strip(), float(c), r) for d in data.values() for k, c, r in zip(d["pid"], d["cost"], d["region"])
            if k is not None and str(k).strip() in common and c != ""]
    return common, rows


# -- the pure steps ----------------------------------------------------------------------------------

def test_keys_are_normalised_as_psi_normalises_them():
    values = [" a ", "a", None, "", "  ", 7, 7.5, "b", "7"]
    keys, rows = agg.key_index(values)
    assert keys == normalise_keys(values)[0] == [b"a", b"7", b"7.5", b"b"]
    assert rows.tolist() == [0, 0, -1, -1, -1, 1, 2, 3, 1]


def test_intersection_positions_and_row_groups():
    t = [bytes([i]) * MATCH for i in range(6)]
    lists = [b"".join([t[0], t[1], t[2], t[3]]), b"".join([t[3], t[1], t[4]]), b"".join([t[5], t[1], t[3], t[3]])]
    inter = agg.intersect_tags(lists)
    assert inter == t[1] + t[3]  # sorted bytewise
    assert agg.sorted_tags(t[3] + t[0] + t[2]) == t[0] + t[2] + t[3]
    own = t[3] + t[0] + t[1]  # own tags in own (shuffled) order
    positions = agg.aligned_positions(own, inter)
    assert positions.tolist() == [1, -1, 0]
    with pytest.raises(agg.ProtocolError):
        agg.aligned_positions(t[0], inter)  # an aligned tag that is not ours
    # keys k0, k1, k2 sent in order [2, 0, 1]: tag j belongs to keys[order[j]]
    rows = np.array([0, 1, 2, -1, 2])
    assert agg.row_groups(rows, [2, 0, 1], positions).tolist() == [-1, 0, 1, -1, 1]
    assert agg.row_groups(np.array([-1, -1]), [], np.zeros(0, dtype=np.int64)).tolist() == [-1, -1]
    assert agg.intersect_tags([]) == b""


def test_ring_masking_commutes_whoever_applies_what():
    keys = [b"id-1", b"id-2", b"CANARY"]
    s = [kernel.new_scalar() for _ in range(4)]
    one = kernel.mask_blob_all(s[2:], kernel.mask_blob_all(s[:2], kernel.hash_points(keys)), MATCH)
    other = kernel.mask_blob(s[1], kernel.mask_blob_all([s[3], s[0], s[2]], kernel.hash_points(keys)), MATCH)
    assert one == other and len(one) == MATCH * 3
    assert kernel.mask_blob_all([], kernel.hash_points(keys)) == kernel.hash_points(keys)


def test_align_params_are_checked():
    ok = [{"columns": ["cost"], "align_on": "pid"},
          {"columns": ["cost"], "align_on": "pid", "group_by": "pid"},
          {"columns": ["cost"], "align_on": "pid", "group_by": "region", "groups": ["north"]}]
    for params in ok:
        job_type("aggregation").check(make_spec(PROVIDERS, params))
    plan = agg.Plan(ok[1])
    assert plan.per_key and plan.groups == [] and plan.load_columns() == ["cost", "pid"]
    assert agg.Plan(ok[2]).load_columns() == ["cost", "region", "pid"]
    for bad in ({"columns": ["cost"], "align_on": ""}, {"columns": ["cost"], "align_on": 3},
                {"columns": ["cost"], "align_on": "cost"},
                {"columns": ["cost"], "align_on": "pid", "group_by": "pid", "groups": ["id-001"]}):
        with pytest.raises(JobRefused):
            job_type("aggregation").check(make_spec(PROVIDERS, bad))


# -- the protocol -----------------------------------------------------------------------------------------

async def test_aligned_and_grouped_by_a_public_column_equals_numpy_over_the_intersection():
    data = datasets()
    params = {"columns": ["cost"], "align_on": "pid", "group_by": "region", "groups": ["north", "south"],
              "histogram": {"edges": [0, 300, 600, 100000]}}
    outcomes, results, wire = await run_job(make_spec(PROVIDERS, params, min_group=5), data)
    assert len({o.result_hash for o in outcomes.values()}) == 1, outcomes
    assert [outcomes[p].records_used for p in PROVIDERS] == [len(data[f"{p}.data"]["pid"]) for p in PROVIDERS]
    common, rows = clear_rows(data)
    assert len(common) == 40
    res = results["zc"]
    assert set(results) == {"zc"} and res["aligned_on"] == "pid"
    for g in ("north", "south"):
        vals = np.array([c for _, c, r in rows if r == g])
        got = res["groups"][g]["cost"]
        assert got["count"] == len(vals)
        assert got["sum"] == pytest.approx(vals.sum(), rel=1e-12)
        assert got["mean"] == pytest.approx(vals.mean(), rel=1e-10)
        assert got["variance"] == pytest.approx(vals.var(), rel=1e-8)
        assert got["histogram"]["counts"] == np.histogram(vals, [0, 300, 600, 100000])[0].tolist()
    # what went where: the ring between providers, tags to the consumer, the aligned keys back
    kinds = {(s, d, k) for s, d, k, _ in wire}
    assert {(f"p{i}", f"p{i % 3 + 1}", "ring") for i in (1, 2, 3)} <= kinds
    assert not any(k == "ring" and (s, d) not in {("p1", "p2"), ("p2", "p3"), ("p3", "p1")} for s, d, k in kinds)
    assert {(p, "zc", "tags") for p in PROVIDERS} | {("zc", p, "aligned") for p in PROVIDERS} <= kinds
    assert {k for s, _, k in kinds if s == "zc"} <= {"aligned", "aligned_end", "finish", "end", "end_ack"}


async def test_grouped_by_the_aligned_key_gives_one_group_per_shared_key():
    data = datasets()
    params = {"columns": ["cost"], "stats": ["count", "sum"], "align_on": "pid", "group_by": "pid"}
    outcomes, results, wire = await run_job(make_spec(PROVIDERS, params), data)
    assert len({o.result_hash for o in outcomes.values()}) == 1, outcomes
    common, rows = clear_rows(data)
    res = results["zc"]
    assert res["group_by"] == "pid" and len(res["groups"]) == len(common) == 40
    per_key = {}
    for k, c, _ in rows:
        n, s = per_key.get(k, (0, 0.0))
        per_key[k] = (n + 1, s + c)
    # the consumer gets each shared key's statistics in a random order, without the key: compare as multisets
    got = sorted((g["cost"]["count"], round(g["cost"]["sum"], 6)) for g in res["groups"])
    assert got == sorted((n, round(s, 6)) for n, s in per_key.values())
    assert not any(k.encode() in f for k in common for _, _, _, f in wire)


async def test_two_providers_share_one_link_for_the_ring_and_an_empty_intersection_counts_nothing():
    data = {"p1.data": {"pid": ["a", "b", "c", "c"], "x": ["1", "2", "3", "4"]},
            "p2.data": {"pid": ["c", "d", "a"], "x": ["10", "20", "30"]}}
    _, results, _ = await run_job(make_spec(["p1", "p2"], {"columns": ["x"], "align_on": "pid"}), data)
    assert results["zc"]["columns"]["x"]["count"] == 5  # a: 1 + 30; c: 3 + 4 + 10
    assert results["zc"]["columns"]["x"]["sum"] == 48.0
    data["p2.data"]["pid"] = ["x", "y", "z"]
    _, results, _ = await run_job(make_spec(["p1", "p2"], {"columns": ["x"], "align_on": "pid", "group_by": "pid"}),
                                  data)
    assert results["zc"]["groups"] == []
    _, results, _ = await run_job(make_spec(["p1", "p2"], {"columns": ["x"], "align_on": "pid"}), data)
    assert results["zc"]["columns"]["x"]["count"] == 0


async def test_per_key_groups_of_one_row_per_provider_cannot_meet_a_minimum_above_the_provider_count():
    data = {f"{p}.data": {"pid": [f"k{i}" for i in range(10)], "x": [str(i) for i in range(10)]} for p in PROVIDERS}
    params = {"columns": ["x"], "align_on": "pid", "group_by": "pid"}
    got, results, wire = await run_job(make_spec(PROVIDERS, params, min_group=4), data)  # every key: 3 rows
    assert all(isinstance(e, JobRefused) and "minimum group size" in str(e) for e in got.values()), got
    assert results == {} and not any(k == "sum" for _, _, k, _ in wire)
    _, results, _ = await run_job(make_spec(PROVIDERS, params, min_group=3), data)
    assert sorted(g["x"]["sum"] for g in results["zc"]["groups"]) == [3.0 * i for i in range(10)]


async def test_aligned_rows_below_the_minimum_group_size_are_refused_before_anything_is_revealed():
    data = datasets()
    data["p3.data"]["pid"] = [k if k in ("id-001", " id-001 ") else "other" for k in data["p3.data"]["pid"]]
    params = {"columns": ["cost"], "align_on": "pid"}
    got, results, wire = await run_job(make_spec(PROVIDERS, params, min_group=50), data)
    assert all(isinstance(e, JobRefused) and "minimum group size" in str(e) for e in got.values()), got
    assert results == {} and not any(k == "sum" for _, _, k, _ in wire)


async def test_a_provider_gone_before_the_ring_fails_the_others_with_peer_lost():
    spec = make_spec(PROVIDERS, {"columns": ["cost"], "align_on": "pid"})
    got, results, _ = await run_job(spec, datasets(), drop="p3")
    assert all(isinstance(e, PeerLost) for e in got.values()), got
    assert results == {}


async def test_a_key_of_one_provider_reaches_no_one_and_no_provider_sees_a_full_tag_it_did_not_make(monkeypatch):
    scalars: list[bytes] = []
    fresh = kernel.new_scalar

    def recorded():
        scalars.append(fresh())
        return scalars[-1]

    monkeypatch.setattr(kernel, "new_scalar", recorded)
    data = datasets()
    outcomes, results, wire = await run_job(make_spec(PROVIDERS, {"columns": ["cost"], "align_on": "pid"}), data)
    assert len(scalars) == 6 and len({o.result_hash for o in outcomes.values()}) == 1

    def full_tags(keys):  # the scalars' order does not matter: masking commutes
        return kernel.mask_blob_all(scalars, kernel.hash_points(keys), MATCH)

    canary = CANARY.encode()
    forms = [canary, hashlib.sha256(canary).digest(), hashlib.sha256(canary).hexdigest().encode(),
             kernel.hash_points([canary])]
    for src, dst, kind, frame in wire:
        assert not any(f in frame for f in forms), (src, dst, kind)
    canary_tag = full_tags([canary])
    assert [(s, d, k) for s, d, k, f in wire if canary_tag in f] == [("p2", "zc", "tags")]  # to C, among p2's set
    all_keys = sorted({str(k).strip().encode() for d in data.values() for k in d["pid"] if k is not None})
    tags = {full_tags([k]) for k in all_keys}
    between_providers = b"".join(f for s, d, _, f in wire if s != "zc" and d != "zc")
    assert not any(t in between_providers for t in tags)
    common, _ = clear_rows(data)
    aligned = b"".join(hs.decode(f)[2] for s, d, k, f in wire if (s, d, k) == ("zc", "p1", "aligned"))
    assert agg.sorted_tags(aligned) == agg.sorted_tags(full_tags(sorted(k.encode() for k in common)))
