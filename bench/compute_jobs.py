"""``make bench-compute-jobs``: issue 7's job types, each against the bare operations it is made of,
in the same run (../shared/BENCH.md). Writes bench/results/compute_jobs.json.

What runs: the real job-type code (services/compute/jobtypes: AggregationJob, HeScoringJob,
SupplyChainJob), every party in this one process as its own asyncio task, over in-memory
channels that encode every frame as the peer channel does (handshake.encode) but neither
encrypt it nor cross gRPC; the heavy work goes where the node sends it (ctx.compute: a
process pool of --workers, like the node's runner; HE on threads as on the node). Data loading
and the listing-commitment check are not in these numbers (the PSI bench, bench/compute.py,
measures those on real nodes); the end-to-end timings on the real chain, Kafka and node
processes are printed by tests/integration/test_compute_jobs.py.

- aggregation: R rows x C columns split evenly over 3 providers (float64 arrays), count, sum,
  mean and variance per column; baseline the plain numpy sum of the same R x C matrix
  (``x.sum(axis=0)``), and also numpy computing the same statistics (count, sum, sum of squares).
- HE scoring: N records x D features through consumer and provider; baseline the bare TenSEAL
  operations it is made of (context, encrypt D column vectors per batch, the linear part and
  the cubic, decrypt), in one process without serialization.
- supply chain: 3 parties with N records each, pairwise; baseline the bare X25519 kernel
  operations (hash-and-mask and re-mask of the same number of keys, on the same pool).

    python -m bench.compute_jobs [--rows 1000000] [--cols 10] [--he 10000] [--he-features 8]
                                 [--sc 100000] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from services.compute import handshake as hs  # noqa: E402
from services.compute import psi_kernel as kernel  # noqa: E402
from services.compute.datasets import Loaded  # noqa: E402
from services.compute.jobtypes import he_scoring as he  # noqa: E402
from services.compute.jobtypes import job_type  # noqa: E402
from services.compute.jobtypes.base import InputRef, JobContext, JobSpec, Message, NodeRef, PeerLost  # noqa: E402


class Chan:
    def __init__(self, peer, inbox, outbox):
        self.peer, self.inbox, self.outbox = peer, inbox, outbox
        self._s, self._r = hashlib.sha256(b"s"), hashlib.sha256(b"s")
        self.bytes = 0

    async def send(self, kind, body=b"", **header):
        frame = hs.encode(kind, header, body)
        self._s.update(frame)
        self.bytes += len(frame)
        await self.outbox.put(frame)

    async def recv(self):
        frame = await self.inbox.get()
        if frame is None:
            raise PeerLost("gone")
        self._r.update(frame)
        return Message(*hs.decode(frame))

    def transcript(self):
        return self._s.hexdigest(), self._r.hexdigest()

    async def close(self):
        await self.outbox.put(None)


async def run_job(type_, consumer, providers, params, data, pool, batch=16384):
    members = sorted({consumer, *providers})
    spec = JobSpec(job="bench", type=type_, consumer=consumer,
                   inputs=tuple(InputRef(f"{p}.data", p, 1, "00" * 32, 1) for p in providers),
                   participants=tuple(members), nodes={m: NodeRef(f"{m}.node", "x") for m in members},
                   params=params, max_price=0, deadline=2**40)
    chans = {m: {} for m in members}
    for a, b in itertools.combinations(members, 2):
        q1, q2 = asyncio.Queue(), asyncio.Queue()
        chans[a][b], chans[b][a] = Chan(b, q2, q1), Chan(a, q1, q2)
    results = {}
    loop = asyncio.get_running_loop()

    def ctx_for(m):
        async def channel(p):
            return chans[m][p]

        async def load(name, cols):
            d = data[name]
            return Loaded(name, "00" * 32, len(next(iter(d.values()))), {c: d[c] for c in cols})

        async def commit(result):
            results[m] = result
            return hashlib.sha256(result).hexdigest()

        async def compute(fn, *args):
            return await loop.run_in_executor(pool, fn, *args)

        return JobContext(spec, m, channel=channel, load_input=lambda ref, cols: load(ref.asset, cols),
                          load_local=load, dataset_key=lambda _: None, commit_result=commit,
                          progress=lambda *a: None, compute=compute, workers=pool._max_workers, batch=batch)

    job = job_type(type_)
    outs = await asyncio.gather(*(job.run(ctx_for(m)) for m in members))
    assert len({o.result_hash for o in outs}) == 1
    wire = sum(c.bytes for per in chans.values() for c in per.values())
    return results[consumer], wire


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


# -- aggregation --------------------------------------------------------------------------------------

def bench_aggregation(rows, cols, rounds, pool):
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 500.0, (rows, cols))
    names = [f"c{j}" for j in range(cols)]
    parts = np.array_split(np.arange(rows), 3)
    data = {f"p{i}.data": {n: np.ascontiguousarray(x[idx, j]) for j, n in enumerate(names)} for i, idx in enumerate(parts)}
    params = {"columns": names, "stats": ["count", "sum", "mean", "variance"]}
    secure, plain, stats = [], [], []
    for r in range(rounds + 1):  # round 0 is the warm-up
        t_plain, s = timed(lambda: x.sum(axis=0))
        t_stats, _ = timed(lambda: ((~np.isnan(x)).sum(axis=0), x.sum(axis=0), (x * x).sum(axis=0)))
        t = time.perf_counter()
        result, wire = asyncio.run(run_job("aggregation", "c", ["p0", "p1", "p2"], params, data, pool))
        t_secure = time.perf_counter() - t
        got = json.loads(result)["columns"]
        assert all(abs(got[n]["sum"] - s[j]) <= 1e-9 * abs(s[j]) for j, n in enumerate(names))
        if r:
            secure.append(t_secure), plain.append(t_plain), stats.append(t_stats)
    ms, mp, mst = common.median(secure), common.median(plain), common.median(stats)
    label = f"{rows // 1000}k" if rows < 1_000_000 else f"{rows // 1_000_000}M"
    return [
        common.metric(f"aggregation_{label}x{cols}_3p_s", ms, "s", baseline_name=f"numpy_sum_{label}x{cols}_s",
                      baseline_value=mp, bar=None, passed=None),
        common.metric(f"aggregation_{label}x{cols}_3p_vs_numpy_stats", ms, "s",
                      baseline_name=f"numpy_count_sum_sumsq_{label}x{cols}_s", baseline_value=mst),
        common.metric(f"aggregation_{label}x{cols}_3p_wire_bytes", wire, "B"),
    ], f"aggregation rounds {[round(v, 3) for v in secure]} vs numpy sum {[round(v, 4) for v in plain]}"


# -- HE scoring -----------------------------------------------------------------------------------------

def bare_he(x, w, b, coeffs):
    ctx = he.new_context()
    import tenseal as ts

    scores = []
    for off in range(0, len(x), he.SLOTS):
        block = x[off:off + he.SLOTS]
        cts = [ts.ckks_vector(ctx, block[:, j].tolist()) for j in range(x.shape[1])]
        z = None
        for ct, wj in zip(cts, w.tolist()):
            z = ct * wj if z is None else z + ct * wj
        z = z + b
        s = (z * coeffs[2]) * (z * z) + z * coeffs[1] + coeffs[0]
        scores.append(np.array(s.decrypt()))
    return np.concatenate(scores)


def bench_he(n, d, rounds, pool):
    rng = np.random.default_rng(2)
    x = np.round(rng.normal(0, 1, (n, d)), 6)
    w, b = rng.normal(0, 0.5, d), 0.1
    feats = [f"f{j}" for j in range(d)]
    data = {"apps": {f: x[:, j] for j, f in enumerate(feats)},
            "m.data": {"feature": feats + ["__intercept__"], "weight": list(w) + [b]}}
    coeffs = he.sigmoid_poly(8)
    clear = he.clear_scores(x, w, b, coeffs)
    job_t, bare_t, errs = [], [], []
    for r in range(rounds + 1):
        tb, sb = timed(bare_he, x, w, b, coeffs)
        t = time.perf_counter()
        result, wire = asyncio.run(run_job("he_scoring", "c", ["m"], {"dataset": "apps", "features": feats}, data, pool))
        tj = time.perf_counter() - t
        err = float(np.abs(np.array(json.loads(result)["scores"]) - clear).max())
        assert err < 1e-3 and np.abs(sb - clear).max() < 1e-3
        if r:
            job_t.append(tj), bare_t.append(tb), errs.append(err)
    mj, mb = common.median(job_t), common.median(bare_t)
    return [
        common.metric(f"he_scoring_{n}x{d}_s", mj, "s", baseline_name=f"bare_tenseal_{n}x{d}_s", baseline_value=mb),
        common.metric(f"he_scoring_{n}x{d}_records_per_s", n / mj, "records/s"),
        common.metric(f"he_scoring_{n}x{d}_max_abs_error_x1e6", max(errs) * 1e6, "1e-6 score",
                      bar="<= 1000 (1e-3)", passed=max(errs) <= 1e-3),
        common.metric(f"he_scoring_{n}x{d}_wire_bytes", wire, "B"),
    ], f"he rounds {[round(v, 3) for v in job_t]} vs bare {[round(v, 3) for v in bare_t]}"


# -- supply chain --------------------------------------------------------------------------------------

def bench_supply_chain(n, rounds, pool):
    kinds = {"a": "contract", "b": "invoice", "c": "payment"}
    refs = [f"PO-{i:08d}" for i in range(n)]
    data = {}
    for i, m in enumerate(kinds):
        amounts = [f"{100 + j % 5000}.25" for j in range(n)]
        if i == 1:
            for j in range(0, n, 100):
                amounts[j] = "1.00"
        table = {"reference": refs, "amount": amounts, "quantity": [str(j % 13 + 1) for j in range(n)]}
        data["records" if m == "a" else f"{m}.data"] = table
    job_t, bare_t = [], []

    def bare():  # the kernel work the protocol is made of: per pair and side, 3n hash-and-mask + 3n re-mask
        async def go():
            loop = asyncio.get_running_loop()
            keys = [f"R{r}".encode() for r in refs] * 3
            step = 16384
            s = kernel.new_scalar()
            jobs = []
            for _ in range(6):  # 3 pairs x 2 sides
                jobs += [loop.run_in_executor(pool, kernel.hash_and_mask, s, keys[o:o + step])
                         for o in range(0, len(keys), step)]
            blobs = await asyncio.gather(*jobs)
            blob = b"".join(blobs[:len(blobs) // 6])
            jobs = []
            for _ in range(6):
                jobs += [loop.run_in_executor(pool, kernel.mask_blob, s, blob[o:o + 32 * step], 16)
                         for o in range(0, len(blob), 32 * step)]
            await asyncio.gather(*jobs)
        asyncio.run(go())

    for r in range(rounds + 1):
        tb, _ = timed(bare)
        t = time.perf_counter()
        result, wire = asyncio.run(run_job("supply_chain", "a", ["b", "c"], {"dataset": "records", "kinds": kinds},
                                           data, pool))
        tj = time.perf_counter() - t
        res = json.loads(result)
        assert res["by_counterpart"]["invoice"]["amount_differs"] == len(range(0, n, 100))
        if r:
            job_t.append(tj), bare_t.append(tb)
    mj, mb = common.median(job_t), common.median(bare_t)
    label = f"{n // 1000}k"
    return [
        common.metric(f"supply_chain_3p_{label}_s", mj, "s", baseline_name=f"bare_x25519_kernel_3p_{label}_s",
                      baseline_value=mb),
        common.metric(f"supply_chain_3p_{label}_records_per_s", 3 * n / mj, "records/s"),
        common.metric(f"supply_chain_3p_{label}_wire_bytes", wire, "B"),
    ], f"supply chain rounds {[round(v, 2) for v in job_t]} vs kernel {[round(v, 2) for v in bare_t]}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=10)
    ap.add_argument("--he", type=int, default=10_000)
    ap.add_argument("--he-features", type=int, default=8)
    ap.add_argument("--sc", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sc-rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(common.RESULTS / "compute_jobs.json"))
    args = ap.parse_args()
    metrics, notes = [], [f"in-process parties over in-memory channels (frames encoded, not encrypted), "
                          f"{args.workers} worker processes; medians of {args.rounds} rounds after a warm-up "
                          f"(supply chain: {args.sc_rounds}); load average before {os.getloadavg()[0]:.2f}"]
    with ProcessPoolExecutor(args.workers) as pool:
        for fn, a in ((bench_aggregation, (args.rows, args.cols, args.rounds, pool)),
                      (bench_he, (args.he, args.he_features, args.rounds, pool)),
                      (bench_supply_chain, (args.sc, args.sc_rounds, pool))):
            t = time.perf_counter()
            ms, note = fn(*a)
            metrics += ms
            notes.append(f"{note} ({time.perf_counter() - t:.0f}s)")
            for m in ms:
                print(m)
    notes.append(f"load average after {os.getloadavg()[0]:.2f}")
    path = common.write("compute_jobs", metrics, "; ".join(notes), Path(args.out))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
