"""HE statistics: count, sum, mean and variance of a provider's numeric column over the records
the consumer selects by id, under CKKS (TenSEAL). The consumer never sees a record's value, the
provider never sees which records were selected. It runs as the ``statistics`` mode of the chain's
``he_scoring`` job type (``he_scoring.py`` dispatches here), so the chain needs no new job type.

Parties: the consumer C (ids, in one of its local datasets) and the provider P (a listed dataset
with an id column and a numeric column). Params::

    {"mode": "statistics",
     "dataset": "watchlist",             # C's local dataset
     "key": "customer_id",               # optional: the id column on both sides (default: each dataset's key)
     "select": "flagged",                # optional: a 0/1 column of C's dataset; only rows with 1 are selected
     "column": "balance",                # P's numeric column
     "stats": ["count", "sum", "mean", "variance"]}   # optional, default all four

Alignment, so that C can build a selection vector over P's records without learning P's ids or
which of its own ids P holds: the ECDH-PSI of ``psi.py`` in its cardinality form, with positions.
P puts its rows (id and value together) in a fresh uniformly random order for this run.

    C → P  start     {n_x: |X|}
    P → C  start     {n: rows of P}
    C → P  xa        H(x)^a for C's selected ids X (normalised, deduplicated, shuffled)
    P → C  yb        H(y_i)^b for P's rows i = 0..n-1 in P's random order
    P → C  xab       (H(x)^a)^b, first 16 bytes, shuffled again by P: C cannot tell which x matched
    C      s_i = 1 if (H(y_i)^b)^a (first 16 bytes) is among the xab values, else 0; c = sum s_i
    C      if 0 < c < min_group_size (the listing's): abort; nothing more is sent, the job fails

Encrypted statistics (CKKS; column packing, SLOTS = 8192 records a batch). The keys are made for the
grant's first run and kept for its next runs, as in the scoring mode (he_keys.py: in memory, at most
an hour, one grant's on each node: they are large)::

    C → P  context_start {size, batches, context_sha256, offer}: offer is true when C sent P this
                     context before; P → C context_held {held} then (as in the scoring mode)
    C → P  context   public key + Galois keys (no secret key, no relin keys), chunks of <= 4 MiB, unless
                     P holds it; P checks its SHA-256 and keeps it for the grant's next runs
    C → P  sel       Enc(s_b) for every batch b, zero-padded to SLOTS
    P      for each needed power p (1 for sum/mean/variance, 2 for variance), with v = x^p:
             acc  = sum_b Enc(s_b) ⊙ v_b  +  Enc_pk(0) ⊙ R        (plaintext multiplies, one level)
             out  = rotate-and-sum(acc)                          (log2 SLOTS rotations, Galois keys)
           R is fresh, uniform in [-K, K]^SLOTS with K = 2^FLOOD_BITS · 2^ceil(log2 max|v|)
    P → C  stats     out_1, out_2 (only the ones the stats need), held back: XORed with an AES-256-CTR
                     keystream of P's fresh release key K (services/compute/release.py)
    P → C  held      {release: SHA-256(K)}   (also when C sent no selection: the job is locked all the same)
    C → P  finish    {commitment: ""}      P → C  finished
    both   attest; the chain locks the job; P publishes K (jobs.Release), which settles it
    C      opens out_1, out_2 with the K on chain; sum = Dec(out_1)[0], sumsq = Dec(out_2)[0];
           count = c (C built s, so it knows c exactly); mean = sum/c, variance = sumsq/c - mean^2
           (population, ddof 0); seals its result

C learns c before the lock (it builds the selection from it): the count of its selected ids P
holds is not held back, the statistics of P's column are (so a count alone is refused: that is
psi_cardinality, whose count is held back).

Why the Enc_pk(0) ⊙ R term (noise flooding). C holds the secret key and could know the noise e_b
of its own fresh ciphertexts; after P's plaintext multiply, the decrypted polynomial contains
e_b·v_b, a known linear function of *every* value of P's column (selected or not). P's term adds
its own fresh encryption noise e' times R: the same form, with randomness C does not know and
2^FLOOD_BITS times larger, and it re-randomises the ciphertext (its c1 part is then a fresh
public-key encryption's, so the rotations' key-switching noise no longer depends on v). This is
heuristic flooding by a factor 2^FLOOD_BITS (16), not a proof of circuit privacy at a 2^-40
statistical distance: that would need far more noise than CKKS at these parameters leaves room
for. Its cost is the error bound below.

CKKS parameters: N = 16384, coeff_mod_bit_sizes [60, 50, 50, 60] (log Q = 220 bits, within the
HomomorphicEncryption.org standard's 438-bit bound for N = 16384 at 128-bit classical security,
ternary secret), scale 2^50; SEAL refuses to load a context below 128 bits, and P refuses a
context with other parameters, without Galois keys, or holding a secret key. After the multiply
and one rescale the modulus left is 110 bits at scale 2^50, so |sum_i v_i| must stay below
2^56: P refuses a column whose sum of squares is larger ("out of range", no value named).

Error bound (stated here, tested in tests/unit/compute/test_jobtypes_he_statistics.py and the integration test):
for S_p = sum_i s_i x_i^p over P's column x (n rows, batches = ceil(n / SLOTS)),
|Dec - S_p| <= 2^-12 · 2^ceil(log2 max_i |x_i^p|) · sqrt(batches) + 2^-20. The count is exact.
Measured over n = 500 .. 40000 and |x| ~ 1e-3 .. 1e5: 1e-7 .. 1.3e-5 times 2^ceil(log2 max|x^p|)
(the flood dominates), i.e. at most ~1/20 of the bound. The variance inherits
|err| <= (err_2 + 2·|mean|·err_1) / count + (err_1 / count)^2.

Security model: semi-honest, two parties; the selection vector and results are CKKS ciphertexts
under C's key (IND-CPA under RLWE at >= 128 bits); the ids are hidden under DDH in Curve25519's
prime-order subgroup with H a random oracle (as in PSI).

Leakage:
- P learns |X| (how many ids C selected) and the stats asked for (public params); not which of
  its records were selected, not how many, not the result.
- C learns n (P's rows), c = |X ∩ Y| (the count, part of the result), sum and sum of squares
  only if a requested stat needs them, and from the flooding noise's size roughly
  ceil(log2 max|x|), and which of P's (shuffled) rows share an id (their H(y)^b are equal).
  Not which of its ids P holds, not any single value.
- Minimum group size: enforced by C's node on c before anything is encrypted; P cannot see c.
  A consumer that deviates (a non-0/1 "selection" such as powers of a base, or ignoring the
  minimum) could learn single values from one run: this needs malicious security (a proof that
  s is binary with c >= the minimum) and is out of scope, as for every job type here.
- Repeated runs over overlapping selections difference out single values: bounded by the grant's
  max_runs, and, if the listing declares a privacy budget, by that budget: each run spends ε on
  chain at submission, and P adds OpenDP Laplace noise for it to the encrypted sum and sum of
  squares of its column clamped to params.bounds (the count, which C computes itself, is exact;
  the noise's sensitivity assumes the 0/1 selection P cannot check).
- The chain and Kafka see the params (column and dataset names), records used (|X| and n), the
  result hash (over both transcripts) and timings. No value, id or ciphertext.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import os
from typing import Any

import numpy as np

from services.compute import dp
from services.compute import psi_kernel as kernel
from services.compute.commitment import canonical_value
from services.compute.jobtypes import he_keys
from services.compute.jobtypes.aggregation import numeric
from services.compute.jobtypes.base import (JobContext, JobRefused, JobSpec, Outcome, ProtocolError, expect, expect_finish,
                                             goodbye)
from services.compute.jobtypes.psi import MATCH, match_positions, normalise_keys, shuffle_blob, shuffled
from services.compute.release import close_held_back, elements, held_back, key_hash, new_key, release_hash, released_key

POLY_DEGREE = 16_384
COEFF_MOD_BITS = [60, 50, 50, 60]
SCALE_BITS = 50
SLOTS = POLY_DEGREE // 2
FLOOD_BITS = 16
ERROR_REL = 2.0 ** -12
ERROR_ABS = 2.0 ** -20
MAX_SUM_BITS = 56
ID_BATCH = 16_384
MAX_ROWS = 1 << 22  # P holds up to 512 selection ciphertexts of ~0.7 MB (~350 MB): more needs streaming
STATS = ("count", "sum", "mean", "variance")
# Keys kept per grant (he_keys.py), under their node_cache names: one grant's each, as they are large
# (a consumer's ~220 MiB in memory with its Galois keys and their 79 MB as sent; a provider's ~45 MiB).
CONSUMER_KEYS, PROVIDER_CONTEXTS, KEPT = "he_statistics/consumer", "he_statistics/provider", 1


# -- the CKKS kernel (pure functions; tests and bench call them directly) ------------------------------

def new_context():
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, POLY_DEGREE, coeff_mod_bit_sizes=COEFF_MOD_BITS)
    ctx.global_scale = 2 ** SCALE_BITS
    ctx.generate_galois_keys()
    return ctx


def public_context(ctx) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=False)


def secret_context(ctx) -> bytes:
    """A run's secret key alone (no public, relinearisation or Galois keys): all the consumer's
    node needs to decrypt after the release, kept in its own state (0600), never sent."""
    return ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def new_keys() -> he_keys.ConsumerKeys:
    """A fresh context with its public part (as sent), that part's SHA-256 and the secret key alone."""
    ctx = new_context()
    return he_keys.new_keys(ctx, public_context(ctx), base64.b64encode(secret_context(ctx)).decode())


def load_secret(blob: bytes):
    import tenseal as ts

    return ts.context_from(blob)


def load_public(blob: bytes):
    """The consumer's public context; ProtocolError unless it is exactly this module's parameters."""
    import tenseal as ts

    try:
        pub = ts.context_from(blob)  # SEAL refuses parameters below 128-bit security
        data = pub.seal_context().data.key_context_data()
        shape = (data.parms().poly_modulus_degree(), data.total_coeff_modulus_bit_count())
    except Exception:  # noqa: BLE001 - garbage, or SEAL's security check
        raise ProtocolError("the consumer's CKKS context could not be loaded at 128-bit security") from None
    if pub.is_private():
        raise ProtocolError("the consumer sent a context holding its secret key")
    if shape != (POLY_DEGREE, sum(COEFF_MOD_BITS)) or not pub.has_galois_keys() or not pub.has_public_key():
        raise ProtocolError("the consumer's CKKS context has other parameters than the protocol's")
    return pub


def encrypt_selection(ctx, s: np.ndarray) -> list[bytes]:
    """Enc(s_b) for each batch of SLOTS positions, zero-padded."""
    import tenseal as ts

    out = []
    for off in range(0, len(s), SLOTS):
        block = np.zeros(SLOTS)
        part = s[off:off + SLOTS]
        block[:len(part)] = part
        out.append(ts.ckks_vector(ctx, block.tolist()).serialize())
    return out


def flood_bound(v: np.ndarray) -> float:
    """K = 2^FLOOD_BITS times max|v| rounded up to a power of two (only that power shows in the noise)."""
    top = float(np.abs(v).max()) if len(v) else 0.0
    return 2.0 ** (FLOOD_BITS + (math.ceil(math.log2(top)) if top > 0 else 0))


def error_bound(x: np.ndarray, power: int) -> float:
    """The stated bound on |Dec(out_p) - sum_i s_i x_i^p| for P's column x (any selection)."""
    v = np.asarray(x, dtype=np.float64) ** power
    top = float(np.abs(v).max()) if len(v) else 0.0
    batches = max(1, math.ceil(len(v) / SLOTS))
    return ERROR_REL * 2.0 ** (math.ceil(math.log2(top)) if top > 0 else 0) * math.sqrt(batches) + ERROR_ABS


def check_range(x: np.ndarray, powers: list[int]) -> None:
    for p in powers:
        if float(np.abs(x ** p).sum()) >= 2.0 ** MAX_SUM_BITS:
            raise JobRefused("the column's values are out of the range the encrypted sums can hold")


def _uniform(k: int, bound: float) -> list[float]:
    """k values uniform in [-bound, bound] from the OS's CSPRNG (53 random bits each)."""
    u = (np.frombuffer(os.urandom(8 * k), dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return ((2 * u - 1) * bound).tolist()


def evaluate(pub, cts: list[bytes], x: np.ndarray, power: int, shift: float = 0.0) -> bytes:
    """P's side for one power: rotate-and-sum(sum_b Enc(s_b) ⊙ x_b^p + Enc_pk(0) ⊙ R) + shift, serialized.
    ``shift`` (the DP noise under a privacy budget) goes in one slot before the rotate-and-sum, so
    it is in every slot of the total: noise added to slot 0 afterwards would leave the exact total
    in the other slots, which a consumer decrypting the raw ciphertext reads."""
    import tenseal as ts

    v = np.zeros(len(cts) * SLOTS)
    v[:len(x)] = np.asarray(x, dtype=np.float64) ** power
    acc = ts.ckks_vector(pub, [0.0] * SLOTS) * _uniform(SLOTS, flood_bound(v))  # flood, and fresh c1
    for b, blob in enumerate(cts):
        acc = acc + ts.ckks_vector_from(pub, blob) * v[b * SLOTS:(b + 1) * SLOTS].tolist()
    if shift:
        acc = acc + ([shift] + [0.0] * (SLOTS - 1))  # before the rotate-and-sum, which puts it in every slot
    return acc.sum().serialize()


def decrypt_first(ctx, blob: bytes) -> float:
    import tenseal as ts

    vec = ts.ckks_vector_from(ctx, blob)
    vec.link_context(ctx)
    return float(vec.decrypt()[0])


def clear_statistics(x: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """What the protocol computes, in the clear (tests and bench)."""
    v = np.asarray(x, dtype=np.float64)[selected]
    return {"count": len(v), "sum": float(v.sum()), "mean": float(v.mean()) if len(v) else None,
            "variance": float(v.var()) if len(v) else None}


def statistics(stats: list[str], count: int, s1: float | None, s2: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    mean = s1 / count if count and s1 is not None else None
    if "count" in stats:
        out["count"] = count
    if "sum" in stats:
        out["sum"] = s1 if count else 0.0
    if "mean" in stats:
        out["mean"] = mean
    if "variance" in stats:
        out["variance"] = max(s2 / count - mean * mean, 0.0) if count else None
    return out


def powers_for(stats: list[str]) -> list[int]:
    return ([1] if {"sum", "mean", "variance"} & set(stats) else []) + ([2] if "variance" in stats else [])


# -- params --------------------------------------------------------------------------------------------

def check_params(params) -> list[str]:
    """Validates the statistics mode's params; returns the stats in canonical order."""
    if not isinstance(params.get("dataset"), str) or not params["dataset"]:
        raise JobRefused("he_scoring statistics needs params.dataset: the consumer's local dataset id")
    if not isinstance(params.get("column"), str) or not params["column"]:
        raise JobRefused("he_scoring statistics needs params.column: the provider's numeric column")
    for name in ("key", "select"):
        if name in params and not (isinstance(params[name], str) and params[name]):
            raise JobRefused(f"params.{name} must be a column name")
    stats = params.get("stats", list(STATS))
    if not isinstance(stats, list) or not stats or not set(stats) <= set(STATS):
        raise JobRefused(f"params.stats must be a non-empty subset of {list(STATS)}")
    if stats == ["count"]:  # it would be all learnt before the lock: nothing of it comes from the encrypted part
        raise JobRefused("params.stats needs sum, mean or variance: a count alone is psi_cardinality's job")
    return [s for s in STATS if s in stats]


def _selected(values: list[Any]) -> np.ndarray:
    flags = numeric(values, "select")
    if not np.isin(flags[~np.isnan(flags)], (0.0, 1.0)).all():
        raise JobRefused("params.select must name a column of 0/1 values")
    return flags == 1.0


def result_hash(spec: JobSpec, c2p: str, p2c: str) -> str:
    return hashlib.sha256(f"rdx/he_statistics/v1/result\n{spec.job}\n{spec.type}\n{c2p}\n{p2c}".encode()).hexdigest()


async def _send_blob(chan, kind: str, blob: bytes, width: int) -> None:
    step = ID_BATCH * width
    for off in range(0, len(blob), step):
        await chan.send(kind, blob[off:off + step], off=off // width)
    await chan.send(f"{kind}_done")


async def _recv_blob(chan, kind: str, width: int, total: int) -> bytes:
    """``total`` elements of ``width`` bytes sent by _send_blob, in order."""
    out = bytearray()
    while True:
        msg = await chan.recv()
        if msg.kind == f"{kind}_done":
            break
        if msg.kind == "abort":
            raise JobRefused(f"{chan.peer} stopped the protocol: {str(msg.header.get('reason'))[:200]}")
        if msg.kind != kind or msg.header.get("off") != len(out) // width or len(msg.body) % width \
                or len(out) + len(msg.body) > total * width:
            raise ProtocolError(f"malformed {kind} batch")
        out += msg.body
    if len(out) != total * width:
        raise ProtocolError(f"fewer {kind} elements than announced")
    return bytes(out)


# -- the two sides -------------------------------------------------------------------------------------

async def run_consumer(ctx: JobContext) -> Outcome:
    spec = ctx.spec
    stats = check_params(spec.params)
    dataset = spec.params["dataset"]
    key = spec.params.get("key") or ctx.dataset_key(dataset)
    if not key:
        raise JobRefused(f"no id column: give params.key or configure a key for {dataset}")
    select = spec.params.get("select")
    ctx.progress("loading", 0, 4)
    loaded = await ctx.load_local(dataset, [key] + ([select] if select else []))
    ids = loaded.columns[key]
    if select:
        ids = [v for v, keep in zip(ids, _selected(loaded.columns[select]).tolist()) if keep]
    del loaded
    keys = shuffled(normalise_keys(ids)[0])
    n_x = len(keys)
    chan = await ctx.channel(spec.inputs[0].provider)
    await chan.send("start", n_x=n_x)
    n = (await expect(chan, "start")).header.get("n")
    if not isinstance(n, int) or not 0 <= n <= MAX_ROWS:
        raise ProtocolError("bad start")
    ctx.progress("aligning", 1, 4)
    a = kernel.new_scalar()
    await _send_blob(chan, "xa", await ctx.compute(kernel.hash_and_mask, a, keys), kernel.POINT)
    del keys
    yb = await _recv_blob(chan, "yb", kernel.POINT, n)
    xab = await _recv_blob(chan, "xab", MATCH, n_x)
    yba = await ctx.compute(kernel.mask_blob, a, yb, MATCH) if n else b""
    del yb
    s = np.zeros(n)
    s[match_positions(yba, xab)] = 1.0  # positions in P's random order: which of C's ids they are is hidden
    count = int(s.sum())
    min_group = max(i.min_group_size for i in spec.inputs)
    if 0 < count < min_group:
        await chan.send("abort", reason="the selection is below the listing's minimum group size")
        raise JobRefused(f"the selection is below the listing's minimum group size ({min_group})")
    powers = powers_for(stats)
    held: dict[int, tuple[int, bytes]] = {}  # power -> (keystream offset, out_p under P's release key)
    noisy = False
    batches = (n + SLOTS - 1) // SLOTS
    secret = None
    if count:
        ctx.progress("encrypting", 2, 4)
        keys = await he_keys.consumer_keys(ctx, CONSUMER_KEYS, new_keys, KEPT)
        he, secret = keys.context, keys.secret
        await chan.send("context_start", size=len(keys.public), batches=batches, **he_keys.offer(keys))
        await he_keys.send_context(chan, keys)
        for b, blob in enumerate(await asyncio.to_thread(encrypt_selection, he, s)):
            await chan.send("sel", blob, batch=b)
        ctx.progress("receiving", 3, 4)
        off = 0
        for p in powers:
            m = await expect(chan, "stats")
            if m.header.get("power") != p:
                raise ProtocolError("results out of order")
            held[p] = (off, bytes(m.body))
            off += elements(m.body)
            noisy = noisy or m.header.get("dp") is True
    else:  # nothing selected: no ciphertext is needed
        await chan.send("context_start", size=0, batches=0)
    provider = spec.inputs[0].provider
    release = release_hash((await expect(chan, "held")).header)
    c2p, p2c = await close_held_back(chan, ctx)  # the sums are held back: nothing to commit yet

    # What finish_consumer needs, kept by the node across a restart (0600, never sent): this run's
    # secret key alone and the held-back sums, meaningless without the key the chain releases.
    pending = json.dumps({"n": n, "n_x": n_x, "count": count, "noisy": noisy, "release": release, "secret": secret,
                          "held": {str(p): [off, base64.b64encode(blob).decode()] for p, (off, blob) in held.items()}})
    # records: P's rows as P announced them and sent them (n masked ids): P is charged for no more.
    return Outcome(result_hash(spec, c2p, p2c), records_used=n_x, summary={"provider_rows": n},
                   records={spec.inputs[0].asset: n}, releases={provider: release}, pending=pending.encode())


async def finish_consumer(ctx: JobContext, pending: bytes, released) -> None:
    """The consumer's statistics: the held-back sums opened with the key the chain released."""
    spec, state = ctx.spec, json.loads(pending)
    key = released_key(released, spec.inputs[0].provider, state["release"])
    sums: dict[int, float] = {}
    if state["held"]:
        keys = he_keys.finishing_keys(ctx, CONSUMER_KEYS, state["secret"])
        he = keys.context if keys is not None else \
            await asyncio.to_thread(load_secret, base64.b64decode(state["secret"]))  # e.g. a restarted node
        for p, (off, blob) in state["held"].items():
            try:
                sums[int(p)] = await asyncio.to_thread(decrypt_first, he, held_back(key, off, base64.b64decode(blob)))
            except Exception:  # noqa: BLE001 - SEAL's error on bytes that are no ciphertext; no value in it
                raise ProtocolError("a released statistic is not a ciphertext") from None
    result = {"provider_rows": state["n"], "selected_ids": state["n_x"], "column": spec.params["column"],
              "statistics": statistics(check_params(spec.params), state["count"], sums.get(1), sums.get(2)),
              "ckks": {"poly_modulus_degree": POLY_DEGREE, "coeff_mod_bit_sizes": COEFF_MOD_BITS,
                       "scale_bits": SCALE_BITS, "flood_bits": FLOOD_BITS}}
    if state["noisy"]:  # the provider's listing has a privacy budget: sum and sum of squares carry its Laplace noise
        result["differential_privacy"] = {"mechanism": "Laplace (OpenDP) on the sums, added by the provider",
                                          "epsilon_milli": spec.params.get("epsilon_milli", 1000)}
    await ctx.commit_result(json.dumps(result, sort_keys=True).encode())
    ctx.progress("done", 4, 4)


def _provider_rows(ids: list[Any], values: list[Any], column: str) -> tuple[list[bytes], np.ndarray]:
    """P's rows that have an id and a value, as (id as the PSI normalises it, value), in a fresh
    random order. Rows sharing an id are all kept (the selection takes every one of them)."""
    x = numeric(values, column)
    if not np.isfinite(x[~np.isnan(x)]).all():
        raise JobRefused(f"column {column} has an infinite value")
    rows = []
    for ident, v in zip(ids, x.tolist()):
        text = canonical_value(ident)
        if text is not None and text.strip() and v == v:
            rows.append((text.strip().encode("utf-8"), v))
    rows = shuffled(rows)
    return [r[0] for r in rows], np.asarray([r[1] for r in rows], dtype=np.float64)


async def run_provider(ctx: JobContext) -> Outcome:
    spec = ctx.spec
    stats = check_params(spec.params)
    ref = ctx.my_inputs[0]
    key = spec.params.get("key") or ctx.dataset_key(ref.asset)
    if not key:
        raise JobRefused(f"no id column: give params.key or configure a key for {ref.asset}")
    ctx.policy.match_column(ref.asset, key)  # the ids are matched on: a join key only
    column = spec.params["column"]
    powers = powers_for(stats)
    epsilon = ctx.policy.epsilon(ref.asset, spec.params)  # the ε the chain charged, or None: no budget
    clamp = ctx.policy.bounds(ref.asset, spec.params, column) if epsilon is not None and powers else None
    ctx.progress("loading", 0, 4)
    loaded = await ctx.load_input(ref, [key, column])
    ids, x = await asyncio.to_thread(_provider_rows, loaded.columns[key], loaded.columns[column], column)
    del loaded
    if clamp is not None:
        x = np.clip(x, *clamp)
    n = len(x)
    if n > MAX_ROWS:
        raise JobRefused(f"he_scoring statistics takes at most {MAX_ROWS} provider rows")
    check_range(x, powers)
    chan = await ctx.channel(spec.consumer)
    n_x = ctx.policy.peer_size((await expect(chan, "start")).header.get("n_x"), "consumer's set size", bound=MAX_ROWS)
    ctx.policy.consumer_set(ref.asset, n_x)  # before this node sends anything
    await chan.send("start", n=n)
    ctx.progress("aligning", 1, 4)
    b = kernel.new_scalar()
    xa = await _recv_blob(chan, "xa", kernel.POINT, n_x)
    await _send_blob(chan, "yb", await ctx.compute(kernel.hash_and_mask, b, ids) if n else b"", kernel.POINT)
    del ids
    xab = await ctx.compute(kernel.mask_blob, b, xa, MATCH) if n_x else b""
    await _send_blob(chan, "xab", shuffle_blob(xab, MATCH), MATCH)  # reshuffled: C learns only how many matched
    release_key, off = new_key(), 0  # the sums go out under it; the chain releases it once the job is locked
    msg = await expect(chan, "context_start")
    size, batches = msg.header.get("size"), msg.header.get("batches")
    if not isinstance(size, int) or not isinstance(batches, int) or not 0 <= size <= 256 << 20 \
            or (size and batches != (n + SLOTS - 1) // SLOTS):
        raise ProtocolError("bad context_start")
    if size:
        ctx.progress("evaluating", 2, 4)
        digest, offered = he_keys.announced(msg.header)
        pub = await he_keys.provider_context(ctx, chan, PROVIDER_CONTEXTS, digest, size, offered, load_public, KEPT)
        cts = []
        for bi in range(batches):
            m = await expect(chan, "sel")
            if m.header.get("batch") != bi:
                raise ProtocolError("selection batches out of order")
            cts.append(m.body)
        for p in powers:
            shift = 0.0
            if clamp is not None:  # Laplace noise on the sum of x^p, ε split evenly over the powers
                shift = float(dp.laplace([0.0], dp.sensitivities(*clamp)[p - 1], epsilon / len(powers))[0])
            try:
                out = await asyncio.to_thread(evaluate, pub, cts, x, p, shift)
            except Exception:  # noqa: BLE001 - a malformed ciphertext; the message names no value
                raise ProtocolError("a selection ciphertext could not be evaluated") from None
            await chan.send("stats", held_back(release_key, off, out), power=p, dp=clamp is not None)
            off += elements(out)
    await chan.send("held", release=key_hash(release_key))
    await expect_finish(chan)
    p2c, c2p = chan.transcript()
    await chan.send("finished")
    await goodbye(ctx.member, [chan])
    ctx.progress("done", 4, 4)
    return Outcome(result_hash(spec, c2p, p2c), records_used=n, summary={"batches": (n + SLOTS - 1) // SLOTS},
                   release_key=release_key)
