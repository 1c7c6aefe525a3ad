"""Secure aggregation between in-process parties over in-memory channels: the ring arithmetic,
results against numpy in the clear, the minimum group size, a lost provider, and what each
party sends (no canary, no input value)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pytest

from services.compute import handshake as hs
from services.compute.datasets import Loaded
from services.compute.jobtypes import JOB_TYPES, job_type
from services.compute.jobtypes import aggregation as agg
from services.compute.jobtypes.base import (InputRef, JobContext, JobRefused, JobSpec, Message, NodeRef, PeerLost)


class MemoryChannel:
    def __init__(self, peer, inbox, outbox, record, wire=None, me=None):
        self.peer, self.inbox, self.outbox, self.record = peer, inbox, outbox, record
        self.wire, self.me = wire, me
        self._sent, self._received = hashlib.sha256(b"s"), hashlib.sha256(b"s")

    async def send(self, kind, body=b"", **header):
        frame = hs.encode(kind, header, body)
        self._sent.update(len(frame).to_bytes(8, "big") + frame)
        self.record.append(frame)
        if self.wire is not None:
            self.wire.append((self.me, self.peer, kind, frame))
        await self.outbox.put(frame)

    async def recv(self):
        frame = await self.inbox.get()
        if frame is None:
            raise PeerLost(f"lost {self.peer}")
        self._received.update(len(frame).to_bytes(8, "big") + frame)
        return Message(*hs.decode(frame))

    def transcript(self):
        return self._sent.copy().hexdigest(), self._received.copy().hexdigest()

    async def close(self):  # as the lifecycle does after every attempt: the peer sees the channel end
        await self.outbox.put(None)


async def run_member(job, ctx, chans):
    try:
        return await job.run(ctx)
    finally:
        for chan in chans.values():
            await chan.close()


def mesh(members, wire=None):
    """chans[a][b]: a's end of the a-b channel; sent[a]: every frame a sent; ``wire``, if given,
    gets every frame as (sender, receiver, kind, frame)."""
    sent = {m: [] for m in members}
    chans = {m: {} for m in members}
    queues = {}
    for a, b in itertools.combinations(members, 2):
        q_ab, q_ba = asyncio.Queue(), asyncio.Queue()
        queues[(a, b)], queues[(b, a)] = q_ab, q_ba
        chans[a][b] = MemoryChannel(b, q_ba, q_ab, sent[a], wire, a)
        chans[b][a] = MemoryChannel(a, q_ab, q_ba, sent[b], wire, b)
    return chans, sent, queues


def make_spec(type_, consumer, providers, params, min_group=1):
    inputs = tuple(InputRef(f"{p}.data", p, 1, "00" * 32, min_group) for p in providers)
    members = sorted({consumer, *providers})
    return JobSpec(job="j-1", type=type_, consumer=consumer, inputs=inputs, participants=tuple(members),
                   nodes={m: NodeRef(f"{m}.node", "x") for m in members}, params=params, max_price=100,
                   deadline=2**40)


def contexts(spec, chans, data, results, progress=None, batch=64, arrow=False):
    """``arrow``: the loads give every column as a pyarrow array of its text, as a node's imported
    copy does for a caller that asks (datasets.ARROW_COLUMNS)."""
    out = {}
    for member in spec.participants:
        async def channel(peer, member=member):
            return chans[member][peer]

        async def load(name, columns, member=member):
            cols = data[name]
            n = len(next(iter(cols.values())))
            if arrow:  # and, as the copy's numbers file, each column whose every value Arrow casts
                text = {c: pa.chunked_array([pa.array([str(v) for v in cols[c]], pa.string())]) for c in columns}
                numbers = {}
                for c, values in text.items():
                    try:
                        numbers[c] = pa.compute.cast(values, pa.float64())
                    except pa.ArrowInvalid:
                        pass
                return Loaded(name, "00" * 32, n, text, numbers)
            return Loaded(name, "00" * 32, n, {c: list(cols[c]) for c in columns})

        async def commit_result(result, member=member):
            results[member] = result
            return hashlib.sha256(result).hexdigest()

        async def compute(fn, *args):
            return await asyncio.to_thread(fn, *args)

        out[member] = JobContext(spec, member, channel=channel, load_input=lambda ref, cols, l=load: l(ref.asset, cols),
                                 load_local=load, dataset_key=lambda _: None, commit_result=commit_result,
                                 progress=progress or (lambda *a: None), compute=compute, workers=2, batch=batch)
    return out


async def run_all(spec, data, arrow=False):
    chans, sent, _ = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, data, results, arrow=arrow)
    job = job_type(spec.type)
    outcomes = dict(zip(ctxs, await asyncio.gather(*(run_member(job, c, chans[m]) for m, c in ctxs.items()))))
    await release(outcomes, results, ctxs)
    return outcomes, results, sent


async def release(outcomes, results, ctxs=None):
    """What the chain does once every party attested: the job is locked, each provider's node
    releases its key, and the consumer's node opens its held-back messages with those keys (from
    the bytes it kept, for a job type that keeps them: as a restarted node would)."""
    ok = {m: o for m, o in outcomes.items() if not isinstance(o, BaseException)}
    waiting = {m: o for m, o in ok.items() if o.pending is not None}
    assert not set(waiting) & set(results), "a result before the release"
    keys = {m: o.release_key for m, o in ok.items() if o.release_key}
    for member, outcome in waiting.items():
        assert set(outcome.releases) <= set(keys)
        await job_type(ctxs[member].spec.type).finish(ctxs[member], outcome.pending, keys)


# -- the ring ---------------------------------------------------------------------------------------

def test_ring_encoding_round_trips_and_shares_sum_back():
    v = np.array([0.0, 1.5, -2.25, 1e12, -1e15, 123456.789, 2 ** -24])
    ring = agg.encode(v)
    assert np.allclose(agg.decode(ring), v, rtol=0, atol=2 ** -24)
    for n in (2, 3, 7):
        shares = agg.share(ring, n)
        assert len(shares) == n
        assert (agg.ring_sum(shares) == ring).all()
        # any n-1 shares look unrelated to the value (no share equals the encoding)
        assert not any((s == ring).all() for s in shares[:-1])


def test_ring_carries_and_borrows_across_the_limbs():
    big = agg.encode(np.array([2.0 ** 60, -(2.0 ** 60)]))  # 2^84 in fixed point: the high limb in use
    total = agg.ring_add(big, big)
    assert list(agg.decode(total)) == [2.0 ** 61, -(2.0 ** 61)]
    assert list(agg.decode(agg.ring_sub(big, big))) == [0.0, 0.0]
    lo = np.array([[2 ** 64 - 1, 0]], dtype=np.uint64)
    one = np.array([[1, 0]], dtype=np.uint64)
    assert agg.ring_add(lo, one).tolist() == [[0, 1]]
    assert agg.ring_sub(np.array([[0, 1]], dtype=np.uint64), one).tolist() == [[2 ** 64 - 1, 0]]


def test_local_aggregate_matches_numpy_per_group_and_bin():
    rng = np.random.default_rng(1)
    x = rng.normal(100, 30, 1000)
    x[::17] = np.nan
    groups = rng.choice(["n", "s", "zz"], 1000)  # "zz" is not one of the public groups: dropped
    plan = agg.Plan({"columns": ["x"], "histogram": {"edges": [0, 50, 100, 150, 200]}, "group_by": "g",
                     "groups": ["n", "s"]})
    out = agg.local_aggregate(plan, {"x": x}, agg.group_index(list(groups), plan.groups)).reshape(2, 1, -1)
    for gi, g in enumerate(["n", "s"]):
        sel = x[(groups == g) & ~np.isnan(x)]
        assert out[gi, 0, 0] == len(sel)
        assert np.isclose(out[gi, 0, 1], sel.sum()) and np.isclose(out[gi, 0, 2], (sel ** 2).sum())
        assert list(out[gi, 0, 3:]) == list(np.histogram(sel, [0, 50, 100, 150, 200])[0])


def test_local_aggregate_of_one_group_matches_numpy_with_nulls_and_bins():
    rng = np.random.default_rng(2)
    x = rng.normal(100, 30, 1000)
    plan = agg.Plan({"columns": ["x", "y"], "histogram": {"edges": [0, 50, 100, 150, 200]}})
    y = x.copy()
    y[::13] = np.nan
    out = agg.local_aggregate(plan, {"x": x, "y": y}, None).reshape(1, 2, -1)
    for c, v in enumerate((x, y)):
        sel = v[~np.isnan(v)]
        assert out[0, c, 0] == len(sel)
        assert np.isclose(out[0, c, 1], sel.sum()) and np.isclose(out[0, c, 2], (sel ** 2).sum())
        assert list(out[0, c, 3:]) == list(np.histogram(sel, [0, 50, 100, 150, 200])[0])


@pytest.mark.parametrize("values", [
    ["1.5", "-2", "3e2", "1e-300", "0.1", "nan", "-inf"],  # Arrow parses every one: one cast
    ["1.5", "", " 2", "1_000", "３"],  # Arrow refuses some (blank, spaces, underscores, other digits)
    [1, None, 3], [1.5, None, -0.0], [True, False], [2**60 + 1, 3],  # Parquet-typed columns
])
def test_a_column_as_an_arrow_array_gives_exactly_what_the_same_values_as_a_list_give(values):
    as_arrow = agg.numeric(pa.chunked_array([pa.array(values)]), "x")
    as_list = agg.numeric(list(values), "x")
    assert as_arrow.dtype == np.float64
    np.testing.assert_array_equal(as_arrow, as_list)


def test_a_non_numeric_value_in_an_arrow_column_is_refused_naming_its_row_not_its_value():
    with pytest.raises(JobRefused, match="row 3") as err:
        agg.numeric(pa.chunked_array([pa.array(["1", "2", "SECRET-VALUE"])]), "amount")
    assert "SECRET" not in str(err.value)


def test_params_are_checked_before_anything_is_read():
    spec = make_spec("aggregation", "c", ["p1", "p2"], {"columns": ["a"]})
    JOB_TYPES["aggregation"]().check(spec)
    for bad in ({}, {"columns": []}, {"columns": ["a"], "stats": ["median"]},
                {"columns": ["a"], "histogram": {"edges": [3, 1]}}, {"columns": ["a"], "group_by": "g"},
                {"columns": ["a"], "group_by": "a", "groups": ["x"]}):
        with pytest.raises(JobRefused):
            JOB_TYPES["aggregation"]().check(make_spec("aggregation", "c", ["p1", "p2"], bad))
    with pytest.raises(JobRefused, match="two providers"):
        JOB_TYPES["aggregation"]().check(make_spec("aggregation", "c", ["p1"], {"columns": ["a"]}))


# -- the protocol -------------------------------------------------------------------------------------

def provider_data(seed, n, canary):
    rng = np.random.default_rng(seed)
    amount = [f"{v:.2f}" for v in rng.gamma(2.0, 500.0, n)]
    qty = [str(int(v)) for v in rng.integers(1, 50, n)]
    region = list(rng.choice(["north", "south", "east"], n))
    amount[3] = ""  # a null
    region[5] = canary  # a canary label: not a public group, so dropped
    return {"amount": amount, "qty": qty, "region": region}


def clear_stats(datas, column, group=None):
    vals = []
    for d in datas:
        for v, g in zip(d[column], d["region"]):
            if v != "" and (group is None or g == group):
                vals.append(float(v))
    a = np.array(vals)
    return len(a), a.sum(), a.mean(), a.var()


@pytest.mark.parametrize("arrow", [False, True], ids=["lists", "arrow-columns"])
async def test_three_providers_aggregate_grouped_columns_with_histograms_like_numpy(arrow):
    providers = ["p1", "p2", "p3"]
    datas = [provider_data(i, 400 + 100 * i, f"CANARY-{i}") for i in range(3)]
    params = {"columns": ["amount", "qty"], "stats": ["sum", "count", "mean", "variance"],
              "histogram": {"edges": [0, 500, 1000, 100000]}, "group_by": "region",
              "groups": ["north", "south", "east"]}
    spec = make_spec("aggregation", "consumer", providers, params, min_group=5)
    outcomes, results, sent = await run_all(spec, {f"{p}.data": d for p, d in zip(providers, datas)}, arrow)
    assert len({o.result_hash for o in outcomes.values()}) == 1
    assert [outcomes[p].records_used for p in providers] == [400, 500, 600]
    assert set(results) == {"consumer"}
    result = json.loads(results["consumer"])
    assert result["providers"] == 3
    for g in ("north", "south", "east"):
        for col in ("amount", "qty"):
            n, s, mean, var = clear_stats(datas, col, g)
            got = result["groups"][g][col]
            assert got["count"] == n
            assert got["sum"] == pytest.approx(s, rel=1e-12, abs=1e-6)
            assert got["mean"] == pytest.approx(mean, rel=1e-10)
            assert got["variance"] == pytest.approx(var, rel=1e-8)
            allv = [float(v) for d in datas for v, gg in zip(d[col], d["region"]) if v != "" and gg == g]
            assert got["histogram"]["counts"] == list(np.histogram(allv, [0, 500, 1000, 100000])[0])
    # nothing a party sent holds a canary or any of the providers' values in clear text
    wire = b"".join(b"".join(f) for f in sent.values())
    for i in range(3):
        assert f"CANARY-{i}".encode() not in wire
    for v in datas[0]["amount"][:30]:
        assert v.encode() not in wire or len(v) < 4
    # the consumer sent only the finish messages (and the channels' closing handshake)
    assert {hs.decode(f)[0] for f in sent["consumer"]} <= {"finish", "end", "end_ack"}


async def test_ungrouped_with_only_some_stats():
    datas = [{"x": ["1.5", "2.5", "3"]}, {"x": [10, 20]}]
    spec = make_spec("aggregation", "c", ["p1", "p2"], {"column": "x", "stats": ["sum", "mean"]})
    _, results, _ = await run_all(spec, {"p1.data": datas[0], "p2.data": datas[1]})
    result = json.loads(results["c"])
    assert result["columns"] == {"x": {"sum": 37.0, "mean": 37.0 / 5}}


async def test_an_aggregate_below_the_minimum_group_size_is_refused_not_revealed():
    datas = [{"x": ["1", "2", "3"], "g": ["a", "a", "b"]}, {"x": ["4", "5"], "g": ["a", "a"]}]
    spec = make_spec("aggregation", "c", ["p1", "p2"], {"columns": ["x"], "group_by": "g", "groups": ["a", "b"]},
                     min_group=2)  # group b has one row
    chans, sent, _ = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, {"p1.data": datas[0], "p2.data": datas[1]}, results)
    job = job_type("aggregation")
    got = await asyncio.gather(*(run_member(job, c, chans[m]) for m, c in ctxs.items()), return_exceptions=True)
    assert all(isinstance(e, JobRefused) and "minimum group size" in str(e) for e in got)
    assert results == {}
    assert not any(hs.decode(f)[0] == "sum" for f in sent["p1"] + sent["p2"])  # no share sum reached c


async def test_a_provider_that_drops_out_fails_the_others_with_peer_lost():
    datas = {"p1.data": {"x": ["1"] * 5}, "p2.data": {"x": ["2"] * 5}, "p3.data": {"x": ["3"] * 5}}
    spec = make_spec("aggregation", "c", ["p1", "p2", "p3"], {"columns": ["x"]})
    chans, _, queues = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, datas, results)
    job = job_type("aggregation")
    for other in ("c", "p1", "p2"):  # p3 is gone: its peers' channels end
        await queues[("p3", other)].put(None)
    got = await asyncio.wait_for(asyncio.gather(*(run_member(job, ctxs[m], chans[m]) for m in ("c", "p1", "p2")),
                                                return_exceptions=True), 10)
    assert all(isinstance(e, PeerLost) for e in got), got
    assert results == {}
