"""HE scoring: the consumer's feature vectors scored by the provider's logistic-regression model
under CKKS (TenSEAL); the consumer never sees the weights, the provider never sees the
features or the scores.

Parties: the consumer C (features, in one of its local datasets) and the provider P (the model,
its listed input). Params::

    {"dataset": "applicants",                  # C's local dataset
     "features": ["income", "debt", "age"],    # columns of C's dataset, names of P's weights
     "id": "applicant_id",                     # optional: a column of C's dataset to label scores
     "sigmoid_range": 8}                       # optional: |z| range the sigmoid polynomial is fitted on

P's model dataset has two columns, ``feature`` and ``weight``: one row per feature named in
params.features, and a row ``__intercept__`` (the bias, 0 if absent).

CKKS parameters (fixed; a context that does not load under SEAL's 128-bit check is refused):
poly_modulus_degree N = 16384, coeff_mod_bit_sizes [60, 40, 40, 40, 60] (log Q = 240 bits, within
the HomomorphicEncryption.org standard's 438-bit bound for N = 16384 at 128-bit classical
security with a ternary secret), scale 2^40, 8192 slots. Multiplicative depth 3: the linear
part (ciphertext x plaintext scalar), z^2, and (c3·z)·z^2.

Protocol (every message on the authenticated, encrypted peer channel)::

    C: keys (sk, pk, relin keys) made for the grant's first run and kept on C's node for the grant's
       next runs (he_keys.py: in memory, at most an hour and 4 grants; an input without a grant gets
       fresh keys every run). Records in batches of 8192 (one slot each); for batch b and feature j a
       ciphertext Enc(x_{b,j}) of that feature's column, encrypted with C's secret key (RLWE's
       symmetric encryption; see ``symmetric``) by C's worker processes, a batch's columns side by side
       (``encrypt_columns``: the secret key goes to them as a run's PSI scalars do) (column packing: no
       rotations, so no Galois keys are made or sent)
    C → P  start     {n, batches, features, context_bytes, context_sha256, offer}: offer is true when
                     C sent P this context before (in this node's lifetime)
    P → C  context_held {held}   only when offered: whether P keeps that SHA-256 for (C, grant)
    C → P  context   the public context (pk, relin keys; no secret key), in chunks of <= 4 MiB, unless
                     P holds it; P checks it hashes to context_sha256 (refused otherwise, and refused if
                     offered, not held and not sent) and keeps it for the grant's next runs (he_keys.py)
    C → P  ct        Enc(x_{b,j}) for every batch b and feature j
    P      z_b   = sum_j w_j·Enc(x_{b,j}) + w_0
           s_b   = c0 + c1·z_b + c3·z_b^3 + Enc_pk(0)      (re-randomised with a fresh encryption of 0)
    P → C  score     s_b for every batch, held back: XORed with an AES-256-CTR keystream of P's fresh
                     release key K (services/compute/release.py)     (then scores_done {release: SHA-256(K)})
    C → P  finish    {commitment: ""}      P → C  finished
    both   attest; the chain locks the job; P publishes K (jobs.Release), which settles it
    C      opens every s_b with the K on chain and decrypts: score_i ≈ c0 + c1·z_i + c3·z_i^3, the least-squares odd cubic fit of the logistic
           sigmoid on [-R, R] (R = sigmoid_range, default 8: 0.5 + 0.15009 z - 0.0015920 z^3, max
           error vs the true sigmoid 0.114 on [-8, 8]; R = 4: 0.038; outside [-R, R] the cubic
           diverges, so choose R for the model's range of z), and seals its result

Security model: semi-honest, two parties. The features and scores are CKKS ciphertexts under
C's key for P (IND-CPA under RLWE at >= 128 bits); P's weights are plaintext scalars applied
on P's node only. One key for a grant's runs (he_keys.py) gives P more ciphertexts under it, which
IND-CPA covers for any number of them; what it changes is what a leaked decryption costs: a
decryption of one of P's score ciphertexts that reaches P (C publishing its raw scores) could give
P the secret key (Li–Micciancio), which then opens every run of the grant within the key's
lifetime, not one run. So C's scores are for C alone, as before, and the key lives an hour at most.

Leakage: P learns the number of records n and the feature names (public params). C learns the
scores — the function's output — which, over enough chosen records (d + 1 of them), determine
a linear model's weights. Two bounds, both on P's node (issue 17):
- C gets no more scores than the n it declares: P takes only full-width (8192-slot) feature
  ciphertexts and adds to every slot past the declared rows a uniform value in [-2^18, 2^18]
  (FLOOD, below the 2^19 a value reaches at scale 2^40 over the last prime), so records packed
  into unused slots come back as noise. Heuristic flooding, as in he_statistics: a slot holding a
  value v is hidden up to a statistical distance of about |v| / 2^18, not exactly;
- a model listed under a privacy budget scores at most d records per grant (n times the grant's
  max_runs, checked before any score is sent; the policy's ``scoring_rows``): d equations in the
  d + 1 unknowns (w, b) leave the model undetermined, while d + 1 chosen records (0 and the unit
  vectors) would give every weight. Rows, not noise, because P cannot bound C's encrypted inputs:
  noise of any fixed size is beaten by chosen records of large enough norm. Without a budget a
  model is bounded only by the grant's max_runs, as before, and a consumer scoring many records
  can fit the model (model extraction is inherent in selling scores). CKKS results
are approximate and their noise depends on the evaluation; P re-randomises the score
ciphertexts with a fresh encryption of zero but does no noise flooding, so a consumer that
decrypts may learn a little about the weights beyond the scores (the Li–Micciancio concern
applies to sharing decryptions; here only C decrypts). The chain sees the params and the
result hash only.

Mode ``statistics`` (``params.mode == "statistics"``): encrypted count, sum, mean and variance of the
provider's column over the consumer's encrypted selection — see ``he_statistics.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from typing import Any

import numpy as np

from services.compute.jobtypes import he_keys, he_statistics
from services.compute.jobtypes.he_statistics import _uniform, load_secret, secret_context
from services.compute.jobtypes.aggregation import as_list, numeric
from services.compute.release import close_held_back, elements, held_back, key_hash, new_key, release_hash, released_key
from services.compute.jobtypes.base import (JobContext, JobRefused, JobSpec, JobType, Outcome, ProtocolError, expect,
                                            expect_finish, goodbye)

POLY_DEGREE = 16_384
COEFF_MOD_BITS = [60, 40, 40, 40, 60]
SCALE_BITS = 40
SLOTS = POLY_DEGREE // 2
CHUNK = he_keys.CHUNK
CONSUMER_KEYS, PROVIDER_CONTEXTS = "he_scoring/consumer", "he_scoring/provider"  # their node_cache names
MAX_FEATURES = 256
FLOOD = 2.0 ** 18  # below the 2^19 a value can reach at scale 2^40 over the last 60-bit prime
INTERCEPT = "__intercept__"


def sigmoid_poly(r: float = 8.0) -> tuple[float, float, float]:
    """(c0, c1, c3): the least-squares fit of 1/(1+e^-z) by c0 + c1 z + c3 z^3 on [-r, r]."""
    z = np.linspace(-r, r, 4001)
    a = np.stack([np.ones_like(z), z, z ** 3], axis=1)
    c, *_ = np.linalg.lstsq(a, 1 / (1 + np.exp(-z)), rcond=None)
    return float(c[0]), float(c[1]), float(c[2])


def clear_scores(x: np.ndarray, w: np.ndarray, b: float, coeffs: tuple[float, float, float]) -> np.ndarray:
    """What the protocol computes, in the clear (tests and bench)."""
    z = x @ w + b
    return coeffs[0] + coeffs[1] * z + coeffs[2] * z ** 3


def new_context():
    import tenseal as ts

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, POLY_DEGREE, coeff_mod_bit_sizes=COEFF_MOD_BITS)
    ctx.global_scale = 2 ** SCALE_BITS
    return ctx


def public_context(ctx) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)


def padded(x: np.ndarray, b: int) -> np.ndarray:
    """Batch ``b`` of x's records, zero-padded to SLOTS rows: the provider takes only full-width
    vectors (see evaluate)."""
    block = np.zeros((SLOTS, x.shape[1]))
    part = x[b * SLOTS:(b + 1) * SLOTS]
    block[:len(part)] = part
    return block


def encrypt_batches(ctx, x: np.ndarray) -> list[list[bytes]]:
    """x: (n, d) → for each batch of SLOTS records, d serialized ciphertexts (one per feature column),
    in this process (the node's jobs use encrypt_columns on its workers)."""
    import tenseal as ts

    return [[ts.ckks_vector(ctx, block[:, j].tolist()).serialize() for j in range(x.shape[1])]
            for block in (padded(x, b) for b in range((len(x) + SLOTS - 1) // SLOTS))]


# On a worker process (``JobContext.compute``): the last secret key it was given, as a loaded context
# (loading takes ~20 ms, and a grant's runs share one key), until another comes or it has not been used
# for WORKER_KEY_IDLE_S (a timer thread of the worker drops it then: the node keeps a grant's keys an
# hour at most, he_keys.LIFETIME_S, and a worker must not outlive that while idle). It encrypts only
# what the node sends it under the key the node sends with it: which key, and for how long, is the
# node's choice (he_keys.py). (SHA-256 of the secret context, the context, its last use.)
WORKER_KEY_IDLE_S = 60.0
_worker_key: tuple[bytes, Any, float] | None = None
_worker_lock = threading.Lock()
_worker_timer: threading.Timer | None = None


def _watch_idle_key(after: float) -> None:
    """Look again in ``after`` seconds (on a daemon timer thread of this worker)."""
    global _worker_timer
    _worker_timer = threading.Timer(after, _drop_idle_key)
    _worker_timer.daemon = True
    _worker_timer.start()


def _drop_idle_key() -> None:
    """The worker's timer: the kept key goes once idle for WORKER_KEY_IDLE_S, else a later look."""
    global _worker_key, _worker_timer
    with _worker_lock:
        _worker_timer = None
        if _worker_key is None:
            return
        idle = time.monotonic() - _worker_key[2]
        if idle >= WORKER_KEY_IDLE_S:
            _worker_key = None
        else:
            _watch_idle_key(WORKER_KEY_IDLE_S - idle)


def encrypt_columns(secret: bytes, block: np.ndarray) -> list[bytes]:
    """Runs on a worker process: each column of ``block`` encrypted under the consumer's secret key
    (``secret``: a context holding it alone, as a run's pending state keeps it) and serialized.
    TenSEAL holds the GIL while it encrypts, so the node's threads would take turns: its worker
    processes encrypt a batch's columns side by side instead."""
    global _worker_key
    import tenseal as ts

    digest = hashlib.sha256(secret).digest()
    with _worker_lock:
        if _worker_key is None or _worker_key[0] != digest:
            _worker_key = None  # the old key goes before the new one is loaded
            _worker_key = (digest, load_symmetric(secret), time.monotonic())
        context = _worker_key[1]  # this call's own reference: the timer may drop the global meanwhile
        if _worker_timer is None:
            _watch_idle_key(WORKER_KEY_IDLE_S)
    out = [ts.ckks_vector(context, block[:, j].tolist()).serialize() for j in range(block.shape[1])]
    with _worker_lock:  # in use until now: the idle time counts from the end of the call
        if _worker_key is not None and _worker_key[0] == digest:
            _worker_key = (digest, context, time.monotonic())
    return out


def load_symmetric(secret: bytes):
    """A context that encrypts with the secret key of ``secret`` (a context holding it alone)."""
    import tenseal as ts

    return ts.context_from(secret + bytes([4 << 3, ts.ENCRYPTION_TYPE.SYMMETRIC.value]))


def symmetric(ctx):
    """``ctx``'s keys in a context that encrypts with the secret key (RLWE's symmetric encryption,
    IND-CPA as the public-key one, ~1.8x faster here); the provider, which has the public key only,
    evaluates its ciphertexts and re-randomises them as any. TenSEAL's Python API makes a context one
    kind or the other: its serialisation says which (tenseal/proto/tensealcontext.proto,
    TenSEALContextProto field 4, encryption_type), and of a field given twice protobuf keeps the last."""
    return load_symmetric(ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False,
                                        save_relin_keys=True))


def new_keys() -> he_keys.ConsumerKeys:
    """Fresh keys: the context the consumer encrypts and decrypts with (the secret key's, symmetric),
    the public part it sends (public key, relinearisation keys), its SHA-256, the secret key alone."""
    ctx = new_context()
    return he_keys.new_keys(symmetric(ctx), public_context(ctx), _b64(secret_context(ctx)))


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def load_public(blob: bytes):
    import tenseal as ts

    ctx = ts.context_from(blob)
    if ctx.is_private():
        raise ProtocolError("the consumer sent a context holding its secret key")
    return ctx


def load_checked(blob: bytes):
    """The consumer's public context, or ProtocolError (no secret key, 128-bit security)."""
    try:
        return load_public(blob)
    except ProtocolError:
        raise
    except Exception:  # noqa: BLE001 - SEAL refuses parameters below 128-bit security, or garbage
        raise ProtocolError("the consumer's CKKS context could not be loaded at 128-bit security") from None


def evaluate(pub, cts: list[bytes], w: np.ndarray, b: float, coeffs: tuple[float, float, float],
             rows: int = SLOTS) -> bytes:
    """The provider's evaluation of one batch: returns the serialized score ciphertext. Only the
    first ``rows`` slots (the records the consumer declared) keep their score: the others get a
    uniform value in [-FLOOD, FLOOD], so a consumer that packs more records into a batch than it
    declared gets no more scores than it declared (and is charged for)."""
    import tenseal as ts

    z = None
    for blob, wj in zip(cts, w.tolist()):
        x = ts.ckks_vector_from(pub, blob)
        if x.size() != SLOTS:
            raise ProtocolError("a feature ciphertext is not of full width")
        term = x * wj
        z = term if z is None else z + term
    z = z + b
    c0, c1, c3 = coeffs
    s = (z * c3) * (z * z) + z * c1 + c0
    flood = [0.0] * rows + _uniform(SLOTS - rows, FLOOD)
    s = s + ts.ckks_vector(pub, flood)  # re-randomised by a fresh encryption (pk), and the rest flooded
    return s.serialize()


def decrypt(ctx, blob: bytes, n: int) -> np.ndarray:
    import tenseal as ts

    return np.asarray(ts.ckks_vector_from(ctx, blob).decrypt()[:n], dtype=np.float64)


def result_hash(spec: JobSpec, c2p: str, p2c: str) -> str:
    return hashlib.sha256(f"rdx/he_scoring/v1/result\n{spec.job}\n{spec.type}\n{c2p}\n{p2c}".encode()).hexdigest()


def _features(params) -> list[str]:
    f = params.get("features")
    if not isinstance(f, list) or not f or len(f) > MAX_FEATURES or not all(isinstance(c, str) and c for c in f) \
            or len(set(f)) != len(f) or INTERCEPT in f:
        raise JobRefused("he_scoring needs params.features: 1 to 256 distinct column names")
    return f


def _coeffs(params) -> tuple[float, float, float]:
    r = params.get("sigmoid_range", 8)
    if not isinstance(r, (int, float)) or not 1 <= r <= 32:
        raise JobRefused("params.sigmoid_range must be a number from 1 to 32")
    return sigmoid_poly(float(r))


def model_weights(features: list[str], names: list[Any], weights: list[Any]) -> tuple[np.ndarray, float]:
    table: dict[str, float] = {}
    values = numeric(weights, "weight")
    for name, w in zip(names, values.tolist()):
        if name is None or w != w:
            continue
        table[str(name).strip()] = float(w)
    missing = [f for f in features if f not in table]
    if missing:
        raise JobRefused(f"the model has no weight for {len(missing)} of the requested features")
    return np.asarray([table[f] for f in features], dtype=np.float64), table.get(INTERCEPT, 0.0)


PER_CALL = 4  # columns a worker encrypts per call: the ~0.5 MB secret key sent with them is a tenth of their work


def in_flight(workers: int) -> int:
    """Ciphertexts encrypted in one round of worker calls, and as many waiting to be sent: the
    consumer holds at most twice this many (~0.85 MB each) whatever the number of features."""
    return PER_CALL * max(1, workers)


async def _encrypt_all(ctx: JobContext, secret: bytes, x: np.ndarray, made: asyncio.Queue) -> None:
    """Every batch's ciphertexts into ``made``, in order: a batch's columns in rounds of
    ``in_flight(ctx.workers)``, each round's split over the worker processes and encrypted side by
    side; an error goes in as it is."""
    try:
        step = in_flight(ctx.workers)
        for b in range((len(x) + SLOTS - 1) // SLOTS):
            block = padded(x, b)
            for lo in range(0, x.shape[1], step):
                columns = np.arange(lo, min(lo + step, x.shape[1]))
                cuts = [c for c in np.array_split(columns, max(1, ctx.workers)) if len(c)]
                for cts in await asyncio.gather(*(ctx.compute(encrypt_columns, secret, block[:, c]) for c in cuts)):
                    for blob in cts:
                        await made.put(blob)
    except Exception as exc:  # noqa: BLE001 - raised by the sender, in the job's task
        await made.put(exc)


class HeScoringJob(JobType):
    """``he_scoring``: the consumer learns its records' scores under the provider's model."""

    name = "he_scoring"

    def check(self, spec: JobSpec) -> None:
        if len(spec.inputs) != 1 or spec.inputs[0].provider == spec.consumer:
            raise JobRefused("he_scoring takes exactly one input, the provider's model")
        if sorted(spec.participants) != sorted({spec.consumer, spec.inputs[0].provider}):
            raise JobRefused("he_scoring runs between the consumer and the provider only")
        if spec.params.get("mode", "scoring") not in ("scoring", "statistics"):
            raise JobRefused("params.mode must be \"scoring\" (the default) or \"statistics\"")
        if spec.params.get("mode") == "statistics":
            he_statistics.check_params(spec.params)
            return
        if not isinstance(spec.params.get("dataset"), str):
            raise JobRefused("he_scoring needs params.dataset: the consumer's local dataset id")
        if "id" in spec.params and not isinstance(spec.params["id"], str):
            raise JobRefused("params.id must be a column name")
        _features(spec.params)
        _coeffs(spec.params)

    async def run(self, ctx: JobContext) -> Outcome:
        self.check(ctx.spec)
        if ctx.spec.params.get("mode") == "statistics":
            return await (he_statistics.run_consumer(ctx) if ctx.is_consumer else he_statistics.run_provider(ctx))
        if ctx.is_consumer:
            return await self._consumer(ctx)
        return await self._provider(ctx)

    async def _consumer(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        features = _features(spec.params)
        id_col = spec.params.get("id")
        ctx.progress("loading")
        # The channel is set up while this node loads its records, takes the grant's keys and encrypts
        # the first batch (the provider's node may still be journaling the job: the dial waits for it).
        dial = asyncio.ensure_future(ctx.channel(spec.inputs[0].provider))
        producer = None
        try:
            loaded = await ctx.load_local(spec.params["dataset"], features + ([id_col] if id_col else []), arrow=True)
            x = np.stack([numeric(loaded.columns[f], f) for f in features], axis=1) if loaded.rows else \
                np.zeros((0, len(features)))
            if np.isnan(x).any() or not np.isfinite(x).all():
                raise JobRefused("a feature value is missing or not finite")
            ids = [str(v) for v in as_list(loaded.columns[id_col])] if id_col else None
            del loaded
            n = len(x)
            batches = (n + SLOTS - 1) // SLOTS
            ctx.progress("encrypting", 0, 2 * batches + 1)
            keys = await he_keys.consumer_keys(ctx, CONSUMER_KEYS, new_keys)
            # The node's worker processes encrypt each batch's columns side by side (encrypt_columns),
            # the first while the channel comes up and the provider says whether it holds the context;
            # at most one round of them waits to be sent. An error is handed to the sender, which raises it.
            made: asyncio.Queue = asyncio.Queue(maxsize=in_flight(ctx.workers))
            producer = asyncio.ensure_future(_encrypt_all(ctx, base64.b64decode(keys.secret), x, made))
            chan = await dial
            await chan.send("start", n=n, batches=batches, features=len(features), context_bytes=len(keys.public),
                            **he_keys.offer(keys))
            await he_keys.send_context(chan, keys)
        except BaseException:
            for task in (dial, producer):
                if task is not None:
                    task.cancel()
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: the error raised here is the one reported
            raise

        async def send_all() -> None:  # concurrently with reading scores: neither side's window fills up
            for b in range(batches):
                for j in range(len(features)):
                    blob = await made.get()
                    if isinstance(blob, Exception):
                        raise blob
                    await chan.send("ct", blob, batch=b, feature=j)
                ctx.progress("encrypting", b + 1, 2 * batches + 1)

        held: list[tuple[int, bytes]] = []  # (keystream offset, s_b under P's release key)

        async def recv_all() -> None:
            off = 0
            for b in range(batches):
                msg = await expect(chan, "score")
                if msg.header.get("batch") != b:
                    raise ProtocolError("score batches out of order")
                held.append((off, bytes(msg.body)))
                off += elements(msg.body)
                ctx.progress("receiving", batches + b + 1, 2 * batches + 1)

        sender = asyncio.ensure_future(send_all())
        try:
            await recv_all()
            await sender
        except BaseException:
            sender.cancel()
            producer.cancel()
            raise
        provider = spec.inputs[0].provider
        release = release_hash((await expect(chan, "scores_done")).header)
        c2p, p2c = await close_held_back(chan, ctx)  # the scores are held back: nothing to commit yet

        # What finish needs, kept by the node across a restart (0600, never sent): this run's secret
        # key alone and the held-back scores, meaningless without the key the chain releases.
        pending = json.dumps({"n": n, "ids": ids, "release": release, "secret": keys.secret,
                              "held": [[off, _b64(blob)] for off, blob in held]}).encode()
        return Outcome(result_hash(spec, c2p, p2c), records_used=n, summary={"batches": batches},
                       releases={provider: release}, pending=pending)

    async def finish(self, ctx: JobContext, pending: bytes, released) -> None:
        if ctx.spec.params.get("mode") == "statistics":
            return await he_statistics.finish_consumer(ctx, pending, released)
        spec, state = ctx.spec, json.loads(pending)
        key = released_key(released, spec.inputs[0].provider, state["release"])
        keys = he_keys.finishing_keys(ctx, CONSUMER_KEYS, state["secret"])
        if keys is not None:  # the run's keys are still this node's for the grant
            he = keys.context
        else:  # a restarted node, or keys made again since: the run's own secret key, as kept
            he = await asyncio.to_thread(load_secret, base64.b64decode(state["secret"]))
        n = state["n"]
        scores = np.empty(n, dtype=np.float64)
        for b, (off, blob) in enumerate(state["held"]):
            m = min(SLOTS, n - b * SLOTS)
            try:
                opened = held_back(key, off, base64.b64decode(blob))
                scores[b * SLOTS:b * SLOTS + m] = await asyncio.to_thread(decrypt, he, opened, m)
            except Exception:  # noqa: BLE001 - SEAL's error on bytes that are no ciphertext; no value in it
                raise ProtocolError("a released score batch is not a ciphertext") from None
        result: dict[str, Any] = {"n": n, "scores": scores.tolist(),
                                  "ckks": {"poly_modulus_degree": POLY_DEGREE, "coeff_mod_bit_sizes": COEFF_MOD_BITS,
                                           "scale_bits": SCALE_BITS},
                                  "sigmoid_poly": list(_coeffs(spec.params))}
        if state["ids"] is not None:
            result["ids"] = state["ids"]
        await ctx.commit_result(json.dumps(result, sort_keys=True).encode())
        batches = len(state["held"])
        ctx.progress("done", 2 * batches + 1, 2 * batches + 1)

    async def _provider(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        features = _features(spec.params)
        coeffs = _coeffs(spec.params)
        ctx.progress("loading")
        loaded = await ctx.load_input(ctx.my_inputs[0], ["feature", "weight"])
        w, b = model_weights(features, loaded.columns["feature"], loaded.columns["weight"])
        rows = loaded.rows
        del loaded
        chan = await ctx.channel(spec.consumer)
        msg = await expect(chan, "start")
        n, batches, d, size = (msg.header.get(k) for k in ("n", "batches", "features", "context_bytes"))
        if not all(isinstance(v, int) and v >= 0 for v in (n, batches, d, size)) or d != len(features) \
                or batches != (n + SLOTS - 1) // SLOTS or size > 64 << 20:
            raise ProtocolError("bad start")
        digest, offered = he_keys.announced(msg.header)
        ctx.policy.scoring_rows(ctx.my_inputs[0].asset, n, len(features))  # before any score is sent
        pub = await he_keys.provider_context(ctx, chan, PROVIDER_CONTEXTS, digest, size, offered, load_checked)
        release_key, off = new_key(), 0  # the scores go out under it; the chain releases it once the job is locked
        for bi in range(batches):
            cts = []
            for j in range(d):
                m = await expect(chan, "ct")
                if m.header.get("batch") != bi or m.header.get("feature") != j:
                    raise ProtocolError("ciphertexts out of order")
                cts.append(m.body)
            try:
                out = await asyncio.to_thread(evaluate, pub, cts, w, b, coeffs, min(SLOTS, n - bi * SLOTS))
            except ProtocolError:
                raise
            except Exception:  # noqa: BLE001
                raise ProtocolError("a ciphertext could not be evaluated") from None
            await chan.send("score", held_back(release_key, off, out), batch=bi)
            off += elements(out)
            ctx.progress("scoring", bi + 1, batches)
        await chan.send("scores_done", release=key_hash(release_key))
        await expect_finish(chan)
        p2c, c2p = chan.transcript()
        await chan.send("finished")
        await goodbye(ctx.member, [chan])
        return Outcome(result_hash(spec, c2p, p2c), records_used=rows, summary={"batches": batches},
                       release_key=release_key)

