"""Secure aggregation across N >= 2 providers: count, sum, mean, variance and histograms of listed
numeric columns, optionally grouped by a key, by additive secret sharing.

Parties: the providers P_1..P_n (each owns exactly one input of the job) and the consumer C, who
receives the result and owns no input. Params (passed through the chain's ``jobs.Submit``
unchanged)::

    {"columns": ["amount", "qty"]            # or "column": "amount"
     "stats": ["sum", "count", "mean", "variance"],           # default: all four
     "histogram": {"edges": [0, 100, 1000, 10000]},           # optional, same edges for every column
     "group_by": "region", "groups": ["north", "south"],      # optional; groups is the public list of labels
     "align_on": "firm_id"}                                   # optional: only keys every provider holds

With ``align_on`` only the rows whose key (that column, normalised as in PSI: canonical text,
surrounding spaces stripped, nulls and blanks dropped) every provider holds are aggregated; the
providers find these keys by a multi-party PSI first (below). Grouping then is either by a public
column among the aligned rows (``group_by`` another column, with its public ``groups``), or by the
aligned key itself (``group_by`` equal to ``align_on``, no ``groups``: one group per shared key,
whose values stay private; the result lists the groups in the order of the keys' common masked
values, a random order that the consumer cannot link to any key).

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
    P_j → C     sum     s_j XORed with an AES-256-CTR keystream of P_j's fresh release key K_j
                        {release: SHA-256(K_j)}   (held back: services/compute/release.py)
    C → P_j     finish  {commitment: SHA-256 of the held-back sums}       P_j → C  finished
    all         attest; the chain locks the job; every P_j publishes K_j (jobs.Release), the last settles
    C           opens every s_j with the K_j on chain; total = sum_j s_j → decode → count, sum, mean,
                variance (population, ddof 0), histogram, only the stats asked for → ctx.commit_result

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
  (SHA-256 over the SHA-256s of the held-back sums) and each provider's records used.
Fixed point: a value's fractional part below 2^-24 (~6e-8) is rounded away.

Alignment (``align_on``), before the local aggregates: a multi-party ECDH-PSI whose output, which
keys all providers hold, reaches the providers only. Providers P_1..P_n (sorted ids) form a ring, P_i → P_{i+1 mod n}; each draws two
fresh X25519 scalars a_i, b_i per run; H is psi_kernel's hash to the prime-order subgroup of
Curve25519 and masking commutes, so every key k of every provider ends as the same full tag
T(k) = H(k)^{a_1 b_1 ... a_n b_n} (first 16 bytes). Each provider's key list, deduplicated and
shuffled by its owner, goes once around the ring in batches, keeping its order::

    P_i → P_{i+1}      ring     H(k)^{a_i} for k in K_i                          (owner i; then ring_end)
    P_j → P_{j+1}      ring     the batch masked with a_j and b_j, forwarded    (every j != i)
    P_{i-1} → P_i      ring     H(k)^{a_i ∏_{j≠i} a_j b_j}, in P_i's order
    P_i                T(k) = that ^ b_i: the full tag of each of its own keys, known only to P_i
    P_i → C            tags     {T(k) : k in K_i}, sorted                         (then tags_end)
    C                  I = the tags in all n lists, sorted
    C → P_i            aligned  I                                                (then aligned_end)
    P_i                its aligned rows: those whose key's tag is in I; per-key group = position in I

Every value that leaves its owner carries the owner's a_i, and the value that would complete a
tag of P_i's key is completed by P_i alone (b_i), so under the decisional Diffie-Hellman
assumption (H a random oracle) no provider can link anything it relays to a key, or to a tag it
later sees; the consumer sees the full tags but knows no scalar and no key. The rest of the
protocol runs unchanged on the aligned rows. The result hash every party attests includes
SHA-256(I), so the parties attest only if they aligned on the same keys. Each party's own reader
never waits on a send, so the ring cannot deadlock on flow control. Sixteen bytes of a tag leave
a chance of a false match of at most (sum_j |K_j|)^2 / 2^128. Not covered, as everywhere here: a
party that deviates, e.g. a provider that puts keys it does not hold into its list to learn
whether all the others hold them (bounded only by the set sizes the others see and the grant's
``max_runs``).

Leakage of alignment, beyond the result and the leakage above:
- to every provider: which of its own keys every provider holds, and so |∩ K_j| (the number of
  aligned keys); |K_j| of every other provider (it relays their lists); with per-key groups, the
  total count and bin counts of every shared key (the count check of the protocol above), that
  is, for each key it holds, how many rows with it the others hold together;
- to the consumer: |K_j| of every provider and the size of every region of their Venn diagram
  (how many keys exactly each subset of providers holds), not which keys; the number of aligned
  keys; with per-key groups, each shared key's statistics without the key. A consumer and a
  provider P_i together learn which other providers hold each of P_i's keys;
- records used (on chain) stays the rows each provider read, as without alignment.

Per-key groups (``group_by`` = ``align_on``): the minimum group size counts rows, so a key meets
it only if the providers hold at least that many rows with it together. With one row per key and
provider (a patient or firm register) every group's count is at most n, so any minimum above n
refuses the job, and a result that passes still describes one subject per group: per-key
grouping suits transaction-level data (many rows per firm); grouping aligned rows by a public
column is the case that aggregates over many subjects.

A provider that disappears mid-protocol shows up as PeerLost on every other party's channel;
the lifecycle runs the job again with fresh randomness up to its attempt limit and then fails
it (the chain refunds the escrow).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import math
import os
from typing import Any

import numpy as np

from services.compute import dp
from services.compute import psi_kernel as kernel
from services.compute.commitment import canonical_value
from services.compute.jobtypes.base import (Channel, JobContext, JobRefused, JobSpec, JobType, Outcome, ProtocolError,
                                             expect, expect_finish, goodbye)
from services.compute.jobtypes.psi import MATCH, shuffled
from services.compute.release import held_back, key_hash, new_key, open_held_back, release_hash, released_key

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
        self.align_on = params.get("align_on")
        if self.align_on is not None and (not isinstance(self.align_on, str) or not self.align_on
                                          or self.align_on in cols):
            raise JobRefused("params.align_on must be a column name that is not one of the aggregated columns")
        self.group_by = params.get("group_by")
        groups = params.get("groups")
        self.per_key = self.group_by is not None and self.group_by == self.align_on
        if self.per_key:  # one group per shared key: the labels are private, so none may be given
            if groups is not None:
                raise JobRefused("grouping by the aligned key takes no params.groups: its values are private")
            self.groups: list[str] = []  # known once the keys are aligned: set_key_groups
        elif self.group_by is not None:
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

    def set_key_groups(self, m: int) -> None:
        """Per-key grouping: m groups, one per aligned key, in the order of their common tags."""
        self.groups = [str(i) for i in range(m)]

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
        extra = [self.group_by] if self.group_by and not self.per_key else []
        return self.columns + extra + ([self.align_on] if self.align_on else [])


def as_list(values: Any) -> list[Any]:
    """A loaded column as a list (a pyarrow array from the imported copy or Parquet: its values)."""
    return values if isinstance(values, list) else values.to_pylist()


def numeric(values: Any, column: str) -> np.ndarray:
    """A column as float64, nulls and blanks as NaN. The error names the column and row, never a value.
    A pyarrow column (datasets.ARROW_COLUMNS) is cast in one vectorised step when Arrow parses every
    value; Arrow's text-to-number cast is stricter than Python's ``float`` (no surrounding spaces, no
    underscores, no blank) and gives the same double for what it accepts, so a column it refuses
    takes the per-value path below and ends exactly as a list of the same values does."""
    if not isinstance(values, list):
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            return pc.cast(values, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values = values.to_pylist()
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
        if gidx is None:  # one group: plain sums (numpy's pairwise sum, no per-row group index)
            xv = x if valid.all() else x[valid]
            g = np.zeros(len(xv), dtype=np.int64) if plan.bins else None
            out[0, c, 0], out[0, c, 1], out[0, c, 2] = len(xv), xv.sum(), (xv * xv).sum()
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


def noise(plan: Plan, epsilon: float, clamp: dict[str, tuple[float, float]]) -> np.ndarray:
    """This provider's Laplace noise for the whole aggregate vector, by OpenDP (services/compute/dp.py).

    One record of this provider is in one group and adds to each column's count (1), sum
    (<= max|bound|), sum of squares (<= max bound^2) and one histogram bin (1). ε is split evenly
    over the columns and these 3 or 4 kinds of slot (basic composition); within a kind the
    vector over groups (and bins) has that L1 sensitivity."""
    G, C, S = len(plan.groups), len(plan.columns), plan.slots
    out = np.zeros((G, C, S), dtype=np.float64)
    each = epsilon / (C * (3 + (1 if plan.bins else 0)))
    for c, name in enumerate(plan.columns):
        d_sum, d_sq = dp.sensitivities(*clamp[name])
        out[:, c, 0] = dp.laplace(np.zeros(G), 1.0, each)
        out[:, c, 1] = dp.laplace(np.zeros(G), d_sum, each)
        out[:, c, 2] = dp.laplace(np.zeros(G), d_sq, each)
        if plan.bins:
            out[:, c, BASE_SLOTS:] = dp.laplace(np.zeros(G * plan.bins), 1.0, each).reshape(G, plan.bins)
    return out.ravel()


def result_of(plan: Plan, total: np.ndarray, providers: int) -> dict[str, Any]:
    t = total.reshape(len(plan.groups), len(plan.columns), plan.slots)
    groups: dict[str, Any] = {}
    for gi, g in enumerate(plan.groups):
        cols: dict[str, Any] = {}
        for ci, c in enumerate(plan.columns):
            n, s, ss = max(int(round(t[gi, ci, 0])), 0), float(t[gi, ci, 1]), float(t[gi, ci, 2])
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
                                    "counts": [max(int(round(v)), 0) for v in t[gi, ci, BASE_SLOTS:]]}
            cols[c] = row
        groups[g] = cols
    result: dict[str, Any] = {"providers": providers, "encoding": f"Z_2^{RING_BITS}, fixed point 2^-{FRAC_BITS}"}
    if plan.align_on:
        result["aligned_on"] = plan.align_on
    if plan.per_key:  # a list in the order of the keys' common tags; the keys themselves are not known here
        result["group_by"] = plan.group_by
        result["groups"] = list(groups.values())
    elif plan.group_by:
        result["group_by"] = plan.group_by
        result["groups"] = groups
    else:
        result["columns"] = groups["*"]
    return result


def result_hash(spec: JobSpec, commitment: str, k: int, aligned: str | None = None) -> str:
    text = f"rdx/aggregation/v1/result\n{spec.job}\n{spec.type}\n{k}\n{commitment}"
    if aligned is not None:  # SHA-256 of the aligned tags: every party attests the same alignment
        text += f"\naligned\n{aligned}"
    return hashlib.sha256(text.encode()).hexdigest()


def _prepare(plan: Plan, loaded_columns: dict[str, list[Any]],
             aligned_group: np.ndarray | None = None,
             clamp: dict[str, tuple[float, float]] | None = None,
             numbers: dict[str, Any] | None = None) -> tuple[np.ndarray, int]:
    """Off the event loop: the provider's local aggregate in ring form, and its rows.
    ``aligned_group`` (with align_on): each row's position among the aligned keys, -1 if not aligned.
    ``clamp`` (under a privacy budget): each column's values clamped to its [lo, hi] first.
    ``numbers`` (Loaded.numbers): columns the dataset's copy holds already cast as numeric() casts."""
    rows = len(next(iter(loaded_columns.values()))) if loaded_columns else 0
    labels = as_list(loaded_columns.pop(plan.group_by)) if plan.group_by and not plan.per_key else None
    numbers = numbers or {}
    cols = {c: numbers[c].to_numpy() if c in numbers else numeric(loaded_columns[c], c) for c in plan.columns}
    for c in plan.columns:
        loaded_columns.pop(c)
    for c, (lo, hi) in (clamp or {}).items():
        cols[c] = np.clip(cols[c], lo, hi)  # NaN (null) stays NaN
    if aligned_group is None:
        gidx = group_index(labels, plan.groups)
    elif plan.per_key:
        gidx = aligned_group
    elif plan.group_by:
        gidx = np.where(aligned_group >= 0, group_index(labels, plan.groups), -1)
    else:
        gidx = np.where(aligned_group >= 0, 0, -1)
    return encode(local_aggregate(plan, cols, gidx)), rows


# -- alignment: multi-party PSI among the providers ------------------------------------------------------

def key_index(values: list[Any]) -> tuple[list[bytes], np.ndarray]:
    """The distinct keys of a column, normalised as psi.normalise_keys does (canonical text,
    surrounding spaces stripped, nulls and blanks dropped), and each row's index among them (-1: none)."""
    values = as_list(values)
    index: dict[bytes, int] = {}
    rows = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        text = canonical_value(v)
        if text is None or not text.strip():
            rows[i] = -1
            continue
        rows[i] = index.setdefault(text.strip().encode("utf-8"), len(index))
    return list(index), rows


def sorted_tags(blob: bytes) -> bytes:
    """MATCH-byte tags in bytewise order (a set's canonical form: it shows nothing but the set)."""
    return np.sort(np.frombuffer(blob, dtype=f"V{MATCH}")).tobytes()


def intersect_tags(lists: list[bytes]) -> bytes:
    """The tags present in every list, sorted bytewise (the consumer's step)."""
    if not lists:
        return b""
    each = [np.unique(np.frombuffer(b, dtype=f"V{MATCH}")) for b in lists]
    values, counts = np.unique(np.concatenate(each), return_counts=True)
    return values[counts == len(lists)].tobytes()


def aligned_positions(own_tags: bytes, aligned: bytes) -> np.ndarray:
    """For each own tag (in own order), its position in the aligned list, or -1. Every aligned tag
    must be one of ours: the intersection is a subset of every provider's set."""
    lookup = {aligned[i:i + MATCH]: i // MATCH for i in range(0, len(aligned), MATCH)}
    pos = np.array([lookup.pop(own_tags[i:i + MATCH], -1) for i in range(0, len(own_tags), MATCH)], dtype=np.int64)
    if lookup:
        raise ProtocolError("the aligned keys are not a subset of this provider's keys")
    return pos


def row_groups(rows: np.ndarray, order: list[int], positions: np.ndarray) -> np.ndarray:
    """Each row's aligned position: rows index keys, keys[order[j]] had tag j, tag j has positions[j]."""
    by_key = np.full(len(order), -1, dtype=np.int64)
    by_key[np.asarray(order, dtype=np.int64)] = positions
    return np.where(rows >= 0, by_key[np.maximum(rows, 0)] if len(by_key) else -1, -1)


async def send_blob(chan: Channel, kind: str, blob: bytes, width: int, batch: int) -> None:
    """``blob`` in messages of at most ``batch`` elements, then ``<kind>_end`` with the count."""
    step = width * batch
    for off in range(0, len(blob), step):
        await chan.send(kind, blob[off:off + step])
    await chan.send(f"{kind}_end", n=len(blob) // width)


async def recv_blob(chan: Channel, kind: str, width: int) -> bytes:
    """What ``send_blob`` sent, checked against its count; a peer's abort becomes JobRefused."""
    parts = []
    while True:
        msg = await chan.recv()
        if msg.kind == "abort":
            raise JobRefused(f"{chan.peer} stopped the protocol: {str(msg.header.get('reason'))[:200]}")
        if msg.kind == f"{kind}_end":
            blob = b"".join(parts)
            if msg.header.get("n") != len(blob) // width:
                raise ProtocolError(f"{kind} batches do not add up to the announced count")
            return blob
        if msg.kind != kind or len(msg.body) % width:
            raise ProtocolError(f"expected {kind}, got {msg.kind}")
        parts.append(msg.body)


async def ring_tags(ctx: JobContext, prev: Channel, nxt: Channel, keys: list[bytes], providers: list[str]) -> bytes:
    """This provider's part of the ring (module docstring): returns the full tags of its own
    ``keys``, MATCH bytes each, in the order of ``keys``."""
    me, n = ctx.member, len(providers)
    a, b = kernel.new_scalar(), kernel.new_scalar()
    inbox: asyncio.Queue = asyncio.Queue()
    tags = bytearray(MATCH * len(keys))
    flight = ctx.workers + 1

    async def read() -> None:  # never waits on a send: the ring cannot deadlock on flow control
        ends = 0
        while ends < n:  # every list passes once: the n - 1 others' to relay, and our own coming back
            msg = await prev.recv()
            if msg.kind == "abort":
                raise JobRefused(f"{prev.peer} stopped the protocol: {str(msg.header.get('reason'))[:200]}")
            if msg.kind not in ("ring", "ring_end") or msg.header.get("owner") not in providers:
                raise ProtocolError(f"expected ring, got {msg.kind}")
            if msg.kind == "ring" and (not isinstance(msg.header.get("off"), int) or msg.header["off"] < 0
                                       or len(msg.body) % kernel.POINT):
                raise ProtocolError("malformed ring batch")
            inbox.put_nowait(msg)
            ends += msg.kind == "ring_end"

    async def send_mine() -> None:
        for off in range(0, len(keys), ctx.batch):
            blob = await ctx.compute(kernel.hash_and_mask, a, keys[off:off + ctx.batch])
            await nxt.send("ring", blob, owner=me, off=off)
        await nxt.send("ring_end", owner=me, n=len(keys))

    async def relay() -> None:
        pending: collections.deque = collections.deque()  # (message, its masking task), in arrival order
        got, ends = 0, 0

        async def settle() -> None:
            nonlocal got
            msg, task = pending.popleft()
            owner = msg.header["owner"]
            if owner != me and task is None:
                await nxt.send("ring_end", owner=owner, n=msg.header.get("n"))
            elif owner != me:
                await nxt.send("ring", await task, owner=owner, off=msg.header["off"])
            elif task is not None:
                out = await task
                off = msg.header["off"]
                if off + len(out) // MATCH > len(keys):
                    raise ProtocolError("a ring batch outside our own set")
                tags[MATCH * off:MATCH * off + len(out)] = out
                got += len(out) // MATCH
            elif msg.header.get("n") != len(keys) or got != len(keys):
                raise ProtocolError("our own list did not come back whole")

        try:
            while ends < n or pending:
                head = pending[0][1] if pending else None
                if pending and (inbox.empty() or len(pending) > flight or head is None or head.done()):
                    await settle()  # in order; waits for the oldest batch only when nothing else is to start
                    continue
                msg = await inbox.get()
                task = None
                if msg.kind == "ring":  # our own list comes back: b completes our tags; others': a and b
                    mine = msg.header["owner"] == me
                    task = asyncio.ensure_future(ctx.compute(kernel.mask_blob_all, [b] if mine else [a, b],
                                                             msg.body, MATCH if mine else kernel.POINT))
                else:
                    ends += 1
                pending.append((msg, task))
        finally:
            for _, task in pending:
                if task is not None:
                    task.cancel()

    tasks = [asyncio.ensure_future(c) for c in (read(), send_mine(), relay())]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        raise
    return bytes(tags)


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
        n = len(providers)
        me = providers.index(ctx.member)
        others = [p for p in providers if p != ctx.member]
        steps = 5
        epsilon = ctx.policy.epsilon(ctx.my_inputs[0].asset, spec.params)  # the ε the chain charged, or None
        clamp = None if epsilon is None else {c: ctx.policy.bounds(ctx.my_inputs[0].asset, spec.params, c)
                                              for c in plan.columns}
        ctx.progress("loading", 0, steps)

        async def load_and_reduce():
            """The columns and, unless the rows must be aligned first, the local aggregate (threads)."""
            loaded = await ctx.load_input(ctx.my_inputs[0], plan.load_columns(), arrow=True)
            if plan.align_on:
                return loaded, None
            return None, await asyncio.to_thread(_prepare, plan, loaded.columns, None, clamp, loaded.numbers)

        # The data is loaded and reduced while the channels are set up: a peer's node may still be
        # journaling the job, and its dial waits for it. A load that fails is reported once the
        # channels are up, as before, so that every peer sees this node stop rather than wait for it.
        local = asyncio.ensure_future(load_and_reduce())
        try:
            chans = dict(zip(others, await asyncio.gather(*(ctx.channel(p) for p in others))))
            to_c = await ctx.channel(spec.consumer)
        except BaseException:
            local.cancel()
            if local.done() and not local.cancelled():
                local.exception()  # retrieved: the channel's error is the one raised
            raise
        loaded, reduced = await local
        aligned_group, aligned = None, None
        if plan.align_on:
            ctx.progress("aligning", 0, steps)
            keys, key_rows = await asyncio.to_thread(key_index, loaded.columns.pop(plan.align_on))
            order = shuffled(list(range(len(keys))))
            prev, nxt = chans[providers[(me - 1) % n]], chans[providers[(me + 1) % n]]
            tags = await ring_tags(ctx, prev, nxt, [keys[i] for i in order], providers)
            del keys
            await send_blob(to_c, "tags", await asyncio.to_thread(sorted_tags, tags), MATCH, ctx.batch)
            inter = await recv_blob(to_c, "aligned", MATCH)
            positions = await asyncio.to_thread(aligned_positions, tags, inter)
            aligned_group = row_groups(key_rows, order, positions)
            aligned = hashlib.sha256(inter).hexdigest()
            if plan.per_key:
                plan.set_key_groups(len(inter) // MATCH)
        k = plan.size
        v, rows = reduced or await asyncio.to_thread(_prepare, plan, loaded.columns, aligned_group, clamp,
                                                     loaded.numbers)
        del loaded, reduced
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
        if epsilon is not None:  # on the consumer's share only: the providers' count check above stays exact
            s = ring_add(s, encode(await asyncio.to_thread(noise, plan, epsilon, clamp)))
        release_key = new_key()  # s_j goes out under it; the chain releases it once the job is locked
        await to_c.send("sum", held_back(release_key, 0, to_bytes(s)), k=k, dp=epsilon is not None,
                        release=key_hash(release_key))
        commitment = await expect_finish(to_c)
        await to_c.send("finished")
        await goodbye(ctx.member, [*chans.values(), to_c])
        ctx.progress("done", steps, steps)
        return Outcome(result_hash(spec, commitment, k, aligned), records_used=rows, summary={"providers": n},
                       release_key=release_key)

    async def _consumer(self, ctx: JobContext, plan: Plan) -> Outcome:
        spec = ctx.spec
        providers = spec.providers
        ctx.progress("waiting for shares", 0, len(providers) + 1)
        chans = dict(zip(providers, await asyncio.gather(*(ctx.channel(p) for p in providers))))
        aligned = None
        if plan.align_on:
            lists = await asyncio.gather(*(recv_blob(chans[p], "tags", MATCH) for p in providers))
            inter = await asyncio.to_thread(intersect_tags, list(lists))
            del lists
            m = len(inter) // MATCH
            if plan.per_key and m > MAX_GROUPS:
                for p in providers:
                    await chans[p].send("abort", reason="too many aligned keys to group by")
                raise JobRefused(f"grouping by the aligned key needs at most {MAX_GROUPS} shared keys")
            for p in providers:
                await send_blob(chans[p], "aligned", inter, MATCH, ctx.batch)
            aligned = hashlib.sha256(inter).hexdigest()
            if plan.per_key:
                plan.set_key_groups(m)
        k = plan.size
        held, releases, noisy = {}, {}, False
        for i, p in enumerate(providers):
            msg = await expect(chans[p], "sum")
            from_bytes(msg.body, k)  # its length, before it is kept
            held[p], releases[p] = bytes(msg.body), release_hash(msg.header)
            noisy = noisy or msg.header.get("dp") is True
            ctx.progress("summing", i + 1, len(providers) + 1)
        # Every s_j is held back under its provider's key: nothing can be summed until the chain has
        # locked the job (every party attested these key hashes) and every key is on chain.
        commitment = hashlib.sha256("\n".join(hashlib.sha256(held[p]).hexdigest() for p in providers).encode()).hexdigest()
        for p in providers:
            await chans[p].send("finish", commitment=commitment)
        for p in providers:
            await expect(chans[p], "finished")
        await goodbye(ctx.member, chans.values())
        # What finish needs, kept by the node across a restart (0600): the held-back sums are
        # meaningless without the providers' keys, which only the chain's release gives.
        pending = json.dumps({"k": k, "noisy": noisy, "key_groups": len(plan.groups) if plan.per_key else None,
                              "held": {p: held[p].hex() for p in providers}, "releases": releases}).encode()
        return Outcome(result_hash(spec, commitment, k, aligned), records_used=0,
                       summary={"providers": len(providers)}, releases=releases, pending=pending)

    async def finish(self, ctx: JobContext, pending: bytes, released) -> None:
        spec, state = ctx.spec, json.loads(pending)
        plan = Plan(dict(spec.params))
        if state["key_groups"] is not None:
            plan.set_key_groups(state["key_groups"])
        k, providers, releases = state["k"], spec.providers, state["releases"]
        parts = [from_bytes(open_held_back(released_key(released, p, releases[p]), bytes.fromhex(state["held"][p])), k)
                 for p in providers]
        total = decode(ring_sum(parts))
        min_group = max(i.min_group_size for i in spec.inputs)
        # The providers checked the exact counts; so do we, unless noise makes ours meaningless.
        if not state["noisy"] and below_minimum(plan, total[plan.count_mask()], min_group):
            raise JobRefused(f"an aggregate is below the listing's minimum group size ({min_group})")
        result = result_of(plan, total, len(providers))
        if state["noisy"]:  # each provider under a privacy budget added its own Laplace noise for the ε charged
            result["differential_privacy"] = {"mechanism": "Laplace (OpenDP), added by each budgeted provider",
                                              "epsilon_milli": spec.params.get("epsilon_milli", 1000)}
        await ctx.commit_result(json.dumps(result, sort_keys=True).encode())
        ctx.progress("done", len(providers) + 1, len(providers) + 1)

