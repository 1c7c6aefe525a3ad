"""Secure aggregation across N >= 2 providers: count, sum, mean, variance and histograms of listed
numeric columns, optionally grouped by a key, by additive secret sharing.

Parties: the providers P_1..P_n (each owns exactly one input of the job) and the consumer C, who
receives the result and owns no input. Params (passed through the chain's ``jobs.Submit``
unchanged)::

    {"columns": ["amount", "qty"]            # or "column": "amount"
     "stats": ["sum", "count", "mean", "variance"],           # default: all four
     "histogram": {"edges": [0, 100, 1000, 10000]},           # optional, same edges for every column
     "group_by": "region", "groups": ["north", "south"]}      # optional; groups is the public list of labels

Encoding. Every provider first reduces its own rows, in the clear and on its own node, to its
local aggregate vector v_i: for each (group, column) the count of non-null values, their sum,
their sum of squares and the histogram bin counts (numpy, vectorised: one ``bincount`` per
column). Statistics that are sums are linear, so the total is sum_i v_i. The vector is encoded
in fixed point with 24 fractional bits (``SCALE`` = 2^24; counts exact) in the ring Z_{2^128},
held as two uint64 limbs per element so that additions, subtractions and random masks are numpy
vector operations (carries and borrows computed with comparisons). 2^128 leaves room for sums of
squares up to ~1e31 without wrapping.

Protocol (every message on the lifecycle's authenticated, encrypted peer channels)::

    P_i: r_ij uniform in Z_{2^128}^K for j != i;  r_ii = v_i - sum_j r_ij
    P_i → P_j   share   r_ij                       (all providers, all-to-all)
    P_j         s_j = sum_i r_ij                   (a uniformly random-looking share of sum_i v_i)
    P_j → P_k   counts  s_j restricted to the count and histogram-bin slots
    P_k         total counts; if any group's count or any non-empty bin is below the largest
                min_group_size of the job's inputs: send abort to C and fail (nothing revealed)
    P_j → C     sum     s_j
    C           total = sum_j s_j  → decode → count, sum, mean, variance (population, ddof 0),
                histogram, only the stats asked for → ctx.commit_result
    C → P_j     finish  {commitment}       P_j → C  finished

Security model: semi-honest (every party follows the protocol), static corruption. The inputs
of an honest provider stay hidden from any coalition that does not include all the other
providers and the consumer together (a coalition of all parties but one can always subtract
its own inputs from the output — inherent in any sum). No honest majority is needed for
privacy: r_ij are uniform, so fewer than n providers' shares reveal nothing. The consumer is
the only party that sees the output; no party is a trusted coordinator.

Leakage, beyond the result itself:
- to every provider: the total per (group, column) counts and histogram bin counts (used to
  enforce the minimum group size before anything reaches the consumer), n, K (the vector
  length, fixed by the public params);
- to the consumer: the total count, sum and sum of squares per (group, column) even if it
  asked for fewer of the four statistics (they are equivalent to count, mean and variance);
- the chain sees the params (column names, group labels, histogram edges), the result hash
  (SHA-256 over the consumer's salted result commitment) and each provider's records used.
Fixed point: a value's fractional part below 2^-24 (~6e-8) is rounded away.

A provider that disappears mid-protocol shows up as PeerLost on every other party's channel;
the lifecycle runs the job again with fresh randomness up to its attempt limit and then fails
it (the chain refunds the escrow).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
from typing import Any

import numpy as np

from services.compute.jobtypes.base import (JobContext, JobRefused, JobSpec, JobType, Outcome, ProtocolError,
                                             expect, goodbye)

FRAC_BITS = 24
SCALE = 1 << FRAC_BITS
RING_BITS = 128
RING = 1 << RING_BITS
M64 = (1 << 64) - 1
STATS = ("count", "sum", "mean", "variance")
BASE_SLOTS = 3  # count, sum, sum of squares; then the histogram bins
MAX_COLUMNS, MAX_GROUPS, MAX_EDGES = 64, 10_000, 257


# -- the ring Z_{2^128} as (K, 2) uint64 [lo, hi] ---------------------------------------------------

def encode(values: np.ndarray) -> np.ndarray:
    """Fixed point (24 fractional bits) in Z_{2^128}; values must be finite."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(flat).all():
        raise ValueError("non-finite value")
    out = np.empty((len(flat), 2), dtype=np.uint64)
    for i, v in enumerate(flat.tolist()):  # v * 2^24 is exact in binary floating point; round is exact
        x = round(v * SCALE) % RING
        out[i, 0], out[i, 1] = x & M64, x >> 64
    return out


def decode(ring: np.ndarray) -> np.ndarray:
    out = np.empty(len(ring), dtype=np.float64)
    for i, (lo, hi) in enumerate(ring.tolist()):
        x = (int(hi) << 64) | int(lo)
        if x >= RING // 2:
            x -= RING
        out[i] = x / SCALE
    return out


def ring_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = a[:, 0] + b[:, 0]
    carry = (lo < a[:, 0]).astype(np.uint64)
    return np.stack([lo, a[:, 1] + b[:, 1] + carry], axis=1)


def ring_sub(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = a[:, 0] - b[:, 0]
    borrow = (a[:, 0] < b[:, 0]).astype(np.uint64)
    return np.stack([lo, a[:, 1] - b[:, 1] - borrow], axis=1)


def random_ring(k: int) -> np.ndarray:
    return np.frombuffer(os.urandom(16 * k), dtype=np.uint64).reshape(k, 2).copy()


def share(v: np.ndarray, n: int) -> list[np.ndarray]:
    """n additive shares of v (ring form): n-1 uniform, the last v minus their sum."""
    shares = [random_ring(len(v)) for _ in range(n - 1)]
    last = v
    for s in shares:
        last = ring_sub(last, s)
    return shares + [last]


def ring_sum(parts: list[np.ndarray]) -> np.ndarray:
    total = parts[0]
    for p in parts[1:]:
        total = ring_add(total, p)
    return total


def to_bytes(ring: np.ndarray) -> bytes:
    return np.ascontiguousarray(ring, dtype="<u8").tobytes()


def from_bytes(blob: bytes, k: int) -> np.ndarray:
    if len(blob) != 16 * k:
        raise ProtocolError("a share of the wrong length")
    return np.frombuffer(blob, dtype="<u8").reshape(k, 2).astype(np.uint64)


# -- params and the local aggregate ------------------------------------------------------------------

class Plan:
    """The shape every party derives from the public params alone."""

    def __init__(self, params: dict[str, Any]):
        cols = params.get("columns", [params["column"]] if "column" in params else None)
        if not isinstance(cols, list) or not cols or not all(isinstance(c, str) and c for c in cols) \
                or len(set(cols)) != len(cols) or len(cols) > MAX_COLUMNS:
            raise JobRefused("aggregation needs params.columns: 1 to 64 distinct column names (or params.column)")
        self.columns: list[str] = cols
        stats = params.get("stats", list(STATS))
        if not isinstance(stats, list) or not stats or not set(stats) <= set(STATS):
            raise JobRefused(f"params.stats must be a non-empty subset of {list(STATS)}")
        self.stats = [s for s in STATS if s in stats]
        edges = (params.get("histogram") or {}).get("edges") if isinstance(params.get("histogram"), dict) else None
        if params.get("histogram") is not None and edges is None:
            raise JobRefused("params.histogram must be {\"edges\": [...]} ")
        if edges is not None:
            if (not isinstance(edges, list) or not 2 <= len(edges) <= MAX_EDGES
                    or not all(isinstance(e, (int, float)) and math.isfinite(e) for e in edges)
                    or any(b <= a for a, b in zip(edges, edges[1:]))):
                raise JobRefused("params.histogram.edges must be 2 to 257 increasing finite numbers")
        self.edges = None if edges is None else np.asarray(edges, dtype=np.float64)
        self.bins = 0 if edges is None else len(edges) - 1
        self.group_by = params.get("group_by")
        groups = params.get("groups")
        if self.group_by is not None:
            if not isinstance(self.group_by, str) or not isinstance(groups, list) or not groups \
                    or len(groups) > MAX_GROUPS or not all(isinstance(g, (str, int)) for g in groups) \
                    or len({str(g) for g in groups}) != len(groups):
                raise JobRefused("params.group_by needs params.groups: the public list of 1 to 10000 distinct labels")
            if self.group_by in cols:
                raise JobRefused("params.group_by may not be one of the aggregated columns")
            self.groups = [str(g) for g in groups]
        else:
            self.groups = ["*"]
        self.slots = BASE_SLOTS + self.bins

    @property
    def size(self) -> int:
        return len(self.groups) * len(self.columns) * self.slots

    def count_mask(self) -> np.ndarray:
        """The slots that are counts (per-column counts and histogram bins), in the flat vector."""
        one = np.zeros(self.slots, dtype=bool)
        one[0] = True
        one[BASE_SLOTS:] = True
        return np.tile(one, len(self.groups) * len(self.columns))

    def load_columns(self) -> list[str]:
        return self.columns + ([self.group_by] if self.group_by else [])


def numeric(values: list[Any], column: str) -> np.ndarray:
    """A column as float64, nulls and blanks as NaN. The error names the column and row, never a value."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise JobRefused(f"column {column} has a non-numeric value in row {i + 1}") from None
    return out


def group_index(labels: list[Any] | None, groups: list[str]) -> np.ndarray:
    """Each row's group number; -1 for rows whose label is not one of the public groups."""
    if labels is None:
        return None  # one group: every row
    lookup = {g: i for i, g in enumerate(groups)}
    return np.fromiter((lookup.get("" if v is None else str(v).strip(), -1) for v in labels), dtype=np.int64,
                       count=len(labels))


def local_aggregate(plan: Plan, columns: dict[str, np.ndarray], gidx: np.ndarray | None) -> np.ndarray:
    """This provider's (groups, columns, slots) float64 aggregate, flattened."""
    G, C, S = len(plan.groups), len(plan.columns), plan.slots
    out = np.zeros((G, C, S), dtype=np.float64)
    for c, name in enumerate(plan.columns):
        x = columns[name]
        valid = ~np.isnan(x)
        if not np.isfinite(x[valid]).all():
            raise JobRefused(f"column {name} has an infinite value")
        if gidx is None:
            g = np.zeros(int(valid.sum()), dtype=np.int64)
            xv = x[valid]
        else:
            keep = valid & (gidx >= 0)
            g, xv = gidx[keep], x[keep]
        out[:, c, 0] = np.bincount(g, minlength=G)
        out[:, c, 1] = np.bincount(g, weights=xv, minlength=G)
        out[:, c, 2] = np.bincount(g, weights=xv * xv, minlength=G)
        if plan.bins:
            b = np.searchsorted(plan.edges, xv, side="right") - 1
            b[xv == plan.edges[-1]] = plan.bins - 1  # the last bin is closed, as numpy.histogram's
            inb = (b >= 0) & (b < plan.bins)
            flat = np.bincount(g[inb] * plan.bins + b[inb], minlength=G * plan.bins)
            out[:, c, BASE_SLOTS:] = flat.reshape(G, plan.bins)
    return out.ravel()


def below_minimum(plan: Plan, counts: np.ndarray, min_group: int) -> bool:
    """True if any count slot is positive but below the minimum (an empty group reveals nothing)."""
    return bool(((counts > 0) & (counts < min_group)).any())


def result_of(plan: Plan, total: np.ndarray, providers: int) -> dict[str, Any]:
    t = total.reshape(len(plan.groups), len(plan.columns), plan.slots)
    groups: dict[str, Any] = {}
    for gi, g in enumerate(plan.groups):
        cols: dict[str, Any] = {}
        for ci, c in enumerate(plan.columns):
            n, s, ss = int(round(t[gi, ci, 0])), float(t[gi, ci, 1]), float(t[gi, ci, 2])
            row: dict[str, Any] = {}
            if "count" in plan.stats:
                row["count"] = n
            if "sum" in plan.stats:
                row["sum"] = s
            mean = s / n if n else None
            if "mean" in plan.stats:
                row["mean"] = mean
            if "variance" in plan.stats:
                row["variance"] = max(ss / n - mean * mean, 0.0) if n else None
            if plan.bins:
                row["histogram"] = {"edges": plan.edges.tolist(),
                                    "counts": [int(round(v)) for v in t[gi, ci, BASE_SLOTS:]]}
            cols[c] = row
        groups[g] = cols
    result: dict[str, Any] = {"providers": providers, "encoding": f"Z_2^{RING_BITS}, fixed point 2^-{FRAC_BITS}"}
    if plan.group_by:
        result["group_by"] = plan.group_by
        result["groups"] = groups
    else:
        result["columns"] = groups["*"]
    return result


def result_hash(spec: JobSpec, commitment: str, k: int) -> str:
    return hashlib.sha256(f"rdx/aggregation/v1/result\n{spec.job}\n{spec.type}\n{k}\n{commitment}".encode()).hexdigest()


def _prepare(plan: Plan, loaded_columns: dict[str, list[Any]]) -> tuple[np.ndarray, int]:
    """Off the event loop: the provider's local aggregate in ring form, and its rows."""
    rows = len(next(iter(loaded_columns.values()))) if loaded_columns else 0
    labels = loaded_columns.pop(plan.group_by) if plan.group_by else None
    cols = {c: numeric(loaded_columns.pop(c), c) for c in plan.columns}
    gidx = group_index(labels, plan.groups)
    return encode(local_aggregate(plan, cols, gidx)), rows


# -- the job type ----------------------------------------------------------------------------------

class AggregationJob(JobType):
    """``aggregation``: the consumer learns aggregate statistics over N >= 2 providers' columns."""

    name = "aggregation"

    def check(self, spec: JobSpec) -> None:
        providers = spec.providers
        if len(providers) < 2:
            raise JobRefused("aggregation needs inputs from at least two providers")
        if spec.consumer in providers:
            raise JobRefused("in aggregation the consumer may not also be a provider")
        if any(len(spec.inputs_of(p)) != 1 for p in providers):
            raise JobRefused("aggregation takes exactly one input per provider")
        if sorted(spec.participants) != sorted({spec.consumer, *providers}):
            raise JobRefused("aggregation runs between the consumer and the providers only")
        Plan(dict(spec.params))

    async def run(self, ctx: JobContext) -> Outcome:
        self.check(ctx.spec)
        plan = Plan(dict(ctx.spec.params))
        if ctx.is_consumer:
            return await self._consumer(ctx, plan)
        return await self._provider(ctx, plan)

    async def _provider(self, ctx: JobContext, plan: Plan) -> Outcome:
        spec = ctx.spec
        providers = spec.providers
        n, k = len(providers), plan.size
        me = providers.index(ctx.member)
        others = [p for p in providers if p != ctx.member]
        steps = 5
        ctx.progress("loading", 0, steps)
        chans = dict(zip(others, await asyncio.gather(*(ctx.channel(p) for p in others))))
        to_c = await ctx.channel(spec.consumer)
        loaded = await ctx.load_input(ctx.my_inputs[0], plan.load_columns())
        v, rows = await asyncio.to_thread(_prepare, plan, loaded.columns)
        del loaded
        ctx.progress("sharing", 1, steps)
        shares = share(v, n)
        for j, p in enumerate(providers):
            if p != ctx.member:
                await chans[p].send("share", to_bytes(shares[j]), k=k)
        mine = [shares[me]]
        for p in others:
            msg = await expect(chans[p], "share")
            mine.append(from_bytes(msg.body, k))
        s = ring_sum(mine)
        ctx.progress("checking group sizes", 2, steps)
        mask = plan.count_mask()
        for p in others:
            await chans[p].send("counts", to_bytes(s[mask]))
        count_parts = [s[mask]]
        for p in others:
            msg = await expect(chans[p], "counts")
            count_parts.append(from_bytes(msg.body, int(mask.sum())))
        counts = decode(ring_sum(count_parts))
        min_group = max(i.min_group_size for i in spec.inputs)
        if below_minimum(plan, counts, min_group):
            await to_c.send("abort", reason="an aggregate is below the listing's minimum group size")
            raise JobRefused(f"an aggregate is below the listing's minimum group size ({min_group})")
        ctx.progress("revealing", 3, steps)
        await to_c.send("sum", to_bytes(s), k=k)
        msg = await expect(to_c, "finish")
        commitment = msg.header.get("commitment")
        if not isinstance(commitment, str):
            raise ProtocolError("finish without a commitment")
        await to_c.send("finished")
        await goodbye(ctx.member, [*chans.values(), to_c])
        ctx.progress("done", steps, steps)
        return Outcome(result_hash(spec, commitment, k), records_used=rows, summary={"providers": n})

    async def _consumer(self, ctx: JobContext, plan: Plan) -> Outcome:
        spec = ctx.spec
        providers, k = spec.providers, plan.size
        ctx.progress("waiting for shares", 0, len(providers) + 1)
        chans = dict(zip(providers, await asyncio.gather(*(ctx.channel(p) for p in providers))))
        parts = []
        for i, p in enumerate(providers):
            msg = await expect(chans[p], "sum")
            parts.append(from_bytes(msg.body, k))
            ctx.progress("summing", i + 1, len(providers) + 1)
        total = decode(ring_sum(parts))
        min_group = max(i.min_group_size for i in spec.inputs)
        if below_minimum(plan, total[plan.count_mask()], min_group):  # the providers checked; so do we
            raise JobRefused(f"an aggregate is below the listing's minimum group size ({min_group})")
        result = json.dumps(result_of(plan, total, len(providers)), sort_keys=True).encode()
        commitment = await ctx.commit_result(result)
        for p in providers:
            await chans[p].send("finish", commitment=commitment)
        for p in providers:
            await expect(chans[p], "finished")
        await goodbye(ctx.member, chans.values())
        ctx.progress("done", len(providers) + 1, len(providers) + 1)
        return Outcome(result_hash(spec, commitment, k), records_used=0, summary={"providers": len(providers)})

