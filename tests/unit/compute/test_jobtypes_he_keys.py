"""he_scoring's keys kept across the runs of one grant (issue 23, he_keys.py): the bounded cache, a
second run that sends the context's SHA-256 instead of the context, a provider that no longer holds
it (sent again) or never held it (refused), keys never shared between grants, and a restarted
consumer's node opening its held-back scores with an empty cache. Real TenSEAL, two in-process
parties over in-memory channels."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import replace

import numpy as np
import pytest

from services.compute import handshake as hs
from services.compute.jobtypes import he_keys, job_type
from services.compute.jobtypes import he_scoring as he
from services.compute.jobtypes.base import ProtocolError
from test_jobtypes_aggregation import contexts, make_spec, mesh, release, run_member

ts = pytest.importorskip("tenseal")
ERROR_BOUND = 1e-3
FEATS = ["income", "debt"]
W, B = np.array([0.7, -1.1]), 0.2


def test_the_cache_is_bounded_in_entries_and_in_time():
    now = [0.0]
    kept = he_keys.Kept(size=2, lifetime=10.0, clock=lambda: now[0])
    kept.put("a", 1)
    kept.put("b", 2)
    assert kept.get("a") == 1  # a is now the most recently used
    kept.put("c", 3)  # over the size: the least recently used (b) goes
    assert len(kept) == 2 and kept.get("b") is None and kept.get("a") == 1 and kept.get("c") == 3
    now[0] = 9.9
    assert kept.get("a") == 1  # use does not extend a lifetime
    now[0] = 10.0
    assert kept.get("a") is None and kept.get("c") is None and len(kept) == 0
    cache: dict = {}
    assert he_keys.kept(cache, "x") is he_keys.kept(cache, "x") and he_keys.kept(cache, "x").size == he_keys.MAX_ENTRIES


def _spec(grant: str, job: str = "j-1"):
    spec = make_spec("he_scoring", "bank", ["scorer"], {"dataset": "apps", "features": FEATS})
    return replace(spec, job=job, inputs=tuple(replace(i, grant=grant) for i in spec.inputs))


def _data(n: int, seed: int):
    x = np.random.default_rng(seed).normal(0, 1, (n, len(FEATS)))
    apps = {f: [f"{v:.6f}" for v in x[:, j]] for j, f in enumerate(FEATS)}
    model = {"feature": FEATS + ["__intercept__"], "weight": [str(v) for v in W] + [str(B)]}
    return x, {"apps": apps, "scorer.data": model}


async def _parties(spec, caches, data, consumer=None):
    """The provider's (scorer) and the consumer's (bank) part of one job, each node with its cache:
    (their outcomes or exceptions, the frames each sent, the results, the contexts)."""
    chans, sent, _ = mesh(spec.participants)
    results = {}
    ctxs = contexts(spec, chans, data, results)
    for member, ctx in ctxs.items():
        ctx.node_cache = caches[member]
    job = job_type("he_scoring")
    outs = await asyncio.gather(run_member(job, ctxs["scorer"], chans["scorer"]),
                                (consumer or run_member)(job, ctxs["bank"], chans["bank"]),
                                return_exceptions=consumer is not None)
    return outs, sent, results, ctxs


async def _run(spec, caches, n=300, seed=1, consumer=None):
    """One job between the bank (consumer) and the scorer (provider), each with its node's cache;
    returns (scores, frames each sent, the consumer's outcome)."""
    x, data = _data(n, seed)
    outs, sent, results, ctxs = await _parties(spec, caches, data, consumer)
    if consumer is not None:
        return outs, sent
    await release(dict(zip(["scorer", "bank"], outs)), results, ctxs)
    scores = np.array(json.loads(results["bank"])["scores"])
    assert np.abs(scores - he.clear_scores(np.round(x, 6), W, B, he.sigmoid_poly(8))).max() < ERROR_BOUND
    return scores, {m: [hs.decode(f) for f in frames] for m, frames in sent.items()}, outs[1]


def _kinds(frames):
    return [k for k, _, _ in frames]


def _start(frames):
    return next(h for k, h, _ in frames if k == "start")


async def test_a_second_run_of_the_grant_sends_the_hash_only_and_reuses_the_keys():
    caches = {"bank": {}, "scorer": {}}
    _, first, out1 = await _run(_spec("g-1", "j-1"), caches)
    assert "context" in _kinds(first["bank"]) and _start(first["bank"])["offer"] is False
    assert "context_held" not in _kinds(first["scorer"])
    sent1 = sum(len(b) for k, _, b in first["bank"] if k == "context")
    assert sent1 == _start(first["bank"])["context_bytes"] > 1_000_000
    assert hashlib.sha256(b"".join(b for k, _, b in first["bank"] if k == "context")).hexdigest() \
        == _start(first["bank"])["context_sha256"]

    _, second, out2 = await _run(_spec("g-1", "j-2"), caches, seed=2)
    start = _start(second["bank"])
    assert start["offer"] is True and start["context_sha256"] == _start(first["bank"])["context_sha256"]
    assert "context" not in _kinds(second["bank"])  # the context went once; the second run sent 64 hex digits
    assert [h for k, h, _ in second["scorer"] if k == "context_held"] == [{"held": True}]
    assert json.loads(out1.pending)["secret"] == json.loads(out2.pending)["secret"]  # one key for the grant
    assert len(he_keys.kept(caches["bank"], he.CONSUMER_KEYS)) == 1
    assert len(he_keys.kept(caches["scorer"], he.PROVIDER_CONTEXTS)) == 1
    pub = he_keys.kept(caches["scorer"], he.PROVIDER_CONTEXTS).get(("bank", "g-1", start["context_sha256"]))
    assert pub is not None and not pub.is_private()  # what the provider keeps holds no secret key


async def test_a_context_from_another_grant_is_never_reused():
    caches = {"bank": {}, "scorer": {}}
    _, first, out1 = await _run(_spec("g-1", "j-1"), caches)
    _, other, out2 = await _run(_spec("g-2", "j-2"), caches, seed=3)
    assert _start(other["bank"])["offer"] is False and "context" in _kinds(other["bank"])
    assert _start(other["bank"])["context_sha256"] != _start(first["bank"])["context_sha256"]
    assert json.loads(out1.pending)["secret"] != json.loads(out2.pending)["secret"]
    # an input without a grant (a job record of old) keeps nothing: fresh keys every run
    caches = {"bank": {}, "scorer": {}}
    for job in ("j-3", "j-4"):
        _, frames, _ = await _run(_spec("", job), caches)
        assert _start(frames["bank"])["offer"] is False and "context" in _kinds(frames["bank"])
    assert not caches["bank"] and not caches["scorer"]


async def test_a_provider_that_no_longer_holds_the_context_is_sent_it_again():
    caches = {"bank": {}, "scorer": {}}
    _, first, _ = await _run(_spec("g-1", "j-1"), caches)
    caches["scorer"] = {}  # the provider's node restarted (or dropped it from its bounded cache)
    _, again, _ = await _run(_spec("g-1", "j-2"), caches, seed=4)
    assert [h for k, h, _ in again["scorer"] if k == "context_held"] == [{"held": False}]
    assert _start(again["bank"])["offer"] is True and "context" in _kinds(again["bank"])
    assert _start(again["bank"])["context_sha256"] == _start(first["bank"])["context_sha256"]
    _, third, _ = await _run(_spec("g-1", "j-3"), caches, seed=5)
    assert "context" not in _kinds(third["bank"])


async def _offer_unheld(job, ctx, chans):
    """A consumer that offers a context by a hash the provider does not hold, then sends ciphertexts."""
    chan = chans["scorer"]
    try:
        await chan.send("start", n=300, batches=1, features=2, context_bytes=5, context_sha256="ab" * 32, offer=True)
        held = (await chan.recv()).header
        assert held == {"held": False}
        await chan.send("ct", b"\x00" * 64, batch=0, feature=0)
    finally:
        for c in chans.values():
            await c.close()


async def _wrong_hash(job, ctx, chans):
    """A consumer that sends a context whose SHA-256 is not the one it announced."""
    chan = chans["scorer"]
    try:
        pub = he.new_keys().public
        await chan.send("start", n=300, batches=1, features=2, context_bytes=len(pub),
                        context_sha256=hashlib.sha256(b"another context").hexdigest(), offer=False)
        for off in range(0, len(pub), he.CHUNK):
            await chan.send("context", pub[off:off + he.CHUNK])
    finally:
        for c in chans.values():
            await c.close()


async def test_the_provider_refuses_a_hash_it_does_not_hold_and_a_context_with_another_hash():
    caches = {"bank": {}, "scorer": {}}
    (provider, _), _ = await _run(_spec("g-1"), caches, consumer=_offer_unheld)
    assert isinstance(provider, ProtocolError) and "does not hold" in str(provider)
    (provider, _), sent = await _run(_spec("g-1"), caches, consumer=_wrong_hash)
    assert isinstance(provider, ProtocolError) and "SHA-256 it announced" in str(provider)
    assert not he_keys.kept(caches["scorer"], he.PROVIDER_CONTEXTS)  # nothing kept from either
    assert {hs.decode(f)[0] for f in sent["scorer"]} <= {"context_held", "abort"}  # no score went out


async def test_a_restarted_consumer_node_opens_its_held_back_scores_with_an_empty_cache(monkeypatch):
    caches = {"bank": {}, "scorer": {}}
    await _run(_spec("g-1", "j-1"), caches)
    x, data = _data(300, 7)
    spec = _spec("g-1", "j-2")
    outs, _, results, ctxs = await _parties(spec, caches, data)
    outs = dict(zip(["scorer", "bank"], outs))
    assert outs["bank"].pending is not None and not results  # held back: nothing to open yet
    # The node restarts between its attestation and the release: a new process, an empty cache; the
    # pending bytes it kept (journal.py, 0600) hold the run's secret key, so the scores still open.
    restarted = contexts(spec, mesh(spec.participants)[0], data, results)
    await release(outs, results, {"bank": restarted["bank"]})
    clear = he.clear_scores(np.round(x, 6), W, B, he.sigmoid_poly(8))
    assert np.abs(np.array(json.loads(results["bank"])["scores"]) - clear).max() < ERROR_BOUND
    # Without a restart the node opens with the keys it keeps for the grant: no secret key loaded.
    results.clear()

    def no_load(_):
        raise AssertionError("the kept keys were not used")
    monkeypatch.setattr(he, "load_secret", no_load)
    await release(outs, results, ctxs)
    assert np.abs(np.array(json.loads(results["bank"])["scores"]) - clear).max() < ERROR_BOUND


async def test_statistics_runs_of_one_grant_send_the_galois_keys_once():
    """The statistics mode keeps its keys per grant too (one grant's, they are large): the second run
    sends the SHA-256 instead of ~79 MB of public and Galois keys, and its statistics are right."""
    from services.compute.jobtypes import he_statistics as st
    from services.compute.policy import InputPolicy, Policy
    from test_jobtypes_he_statistics import _parties as stat_parties

    provider, consumer, balance, selected = stat_parties(n_provider=3000, seed=11)
    params = {"mode": "statistics", "dataset": "mine", "key": "customer_id", "select": "flagged", "column": "balance"}
    caches = {"bank": {}, "telco": {}}
    want = st.clear_statistics(balance, selected)
    frames = []
    for job, grant in (("j-1", "g-1"), ("j-2", "g-1"), ("j-3", "g-2")):
        spec = make_spec("he_scoring", "bank", ["telco"], params, min_group=10)
        spec = replace(spec, job=job, inputs=tuple(replace(i, grant=grant) for i in spec.inputs))
        chans, sent, _ = mesh(spec.participants)
        results = {}
        ctxs = contexts(spec, chans, {"mine": consumer, "telco.data": provider}, results)
        for member, ctx in ctxs.items():
            ctx.node_cache = caches[member]
        ctxs["telco"].policy = Policy(inputs={"telco.data": InputPolicy("telco.data", 10, frozenset({"customer_id"}))})
        job_ = job_type("he_scoring")
        outs = await asyncio.gather(*(run_member(job_, c, chans[m]) for m, c in ctxs.items()))
        await release(dict(zip(ctxs, outs)), results, ctxs)
        got = json.loads(results["bank"])["statistics"]
        assert got["count"] == want["count"] and abs(got["sum"] - want["sum"]) < st.error_bound(balance[~np.isnan(balance)], 1)
        frames.append({m: [hs.decode(f) for f in fs] for m, fs in sent.items()})
    first, second, other = frames
    assert sum(len(b) for k, _, b in first["bank"] if k == "context") > 50_000_000
    assert "context" not in _kinds(second["bank"]) and [h for k, h, _ in second["telco"] if k == "context_held"] == [{"held": True}]
    assert "context" in _kinds(other["bank"])  # another grant: other keys, sent whole
    assert len(he_keys.kept(caches["bank"], st.CONSUMER_KEYS)) == 1 == len(he_keys.kept(caches["telco"], st.PROVIDER_CONTEXTS))


def test_the_consumer_encrypts_with_its_secret_key_and_the_provider_evaluates_that_as_any():
    keys = he.new_keys()
    with pytest.raises(ValueError, match="symmetric"):  # TenSEAL's word for a context encrypting with the secret key
        keys.context.has_public_key()
    pub = he.load_public(keys.public)
    assert pub.has_public_key() and not pub.is_private()
    x = np.random.default_rng(8).normal(0, 1, (he.SLOTS + 50, 3))
    w = np.array([0.5, -0.9, 0.3])
    got = np.concatenate([he.decrypt(keys.context, he.evaluate(pub, bt, w, 0.1, he.sigmoid_poly(8)),
                                     min(he.SLOTS, len(x) - i * he.SLOTS))
                          for i, bt in enumerate(he.encrypt_batches(keys.context, x))])
    assert np.abs(got - he.clear_scores(x, w, 0.1, he.sigmoid_poly(8))).max() < ERROR_BOUND
    # the secret key kept for a run's finish decrypts them too
    again = he.load_secret(base64.b64decode(keys.secret))
    blob = he.evaluate(pub, he.encrypt_batches(keys.context, x[:5])[0], w, 0.1, he.sigmoid_poly(8))
    assert np.abs(he.decrypt(again, blob, 5) - he.clear_scores(x[:5], w, 0.1, he.sigmoid_poly(8))).max() < ERROR_BOUND


@pytest.mark.parametrize("header", [
    {}, {"context_sha256": "ab" * 32}, {"context_sha256": "ab" * 32, "offer": "yes"},
    {"context_sha256": "AB" * 32, "offer": True}, {"context_sha256": "ab" * 31, "offer": False},
    {"context_sha256": "zz" * 32, "offer": False}, {"context_sha256": 7, "offer": False},
    {"context_sha256": ["ab" * 32], "offer": True}])
def test_a_malformed_context_announcement_is_a_protocol_error(header):
    with pytest.raises(ProtocolError, match="announced by its SHA-256"):
        he_keys.announced(header)
    assert he_keys.announced({"context_sha256": "ab" * 32, "offer": True}) == ("ab" * 32, True)


def test_a_worker_encrypts_under_the_secret_key_it_is_given_and_switches_when_another_comes():
    first, second = he.new_keys(), he.new_keys()
    block = he.padded(np.random.default_rng(3).normal(0, 1, (7, 2)), 0)
    for keys in (first, second, first):
        cts = he.encrypt_columns(base64.b64decode(keys.secret), block)
        assert len(cts) == 2
        for j, blob in enumerate(cts):
            assert np.abs(he.decrypt(keys.context, blob, he.SLOTS) - block[:, j]).max() < 1e-6
    other = ts.ckks_vector_from(second.context, cts[0])  # first's ciphertext, read with second's key
    assert np.abs(np.asarray(other.decrypt()[:7]) - block[:7, 0]).max() > 1


def test_a_worker_drops_its_secret_key_once_idle_and_keeps_it_while_used(monkeypatch):
    """On the worker's own clock, read through a test clock: wall-clock gaps on a loaded CI machine
    (2026-12-04: more than 3 s between two uses 0.25 s apart) once dropped the key mid-use."""
    if he._worker_timer is not None:  # an earlier test's worker timer, set at the full idle time
        he._worker_timer.cancel()
    monkeypatch.setattr(he, "_worker_timer", None)
    monkeypatch.setattr(he, "WORKER_KEY_IDLE_S", 3.0)
    now = [1000.0]
    monkeypatch.setattr(he, "time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))

    def timer_looks() -> None:  # what the worker's timer does when it fires; its own next look cancelled
        he._drop_idle_key()
        if he._worker_timer is not None:
            he._worker_timer.cancel()
            he._worker_timer = None

    keys = he.new_keys()
    secret = base64.b64decode(keys.secret)
    block = he.padded(np.random.default_rng(5).normal(0, 1, (3, 1)), 0)
    he.encrypt_columns(secret, block)
    for _ in range(16):  # used every 0.25 s for 4 s: kept past its idle time from the first use
        now[0] += 0.25
        timer_looks()
        assert he._worker_key is not None
        he.encrypt_columns(secret, block)
    now[0] += 2.9
    timer_looks()
    assert he._worker_key is not None  # not yet idle
    now[0] += 0.2
    timer_looks()
    assert he._worker_key is None  # idle: gone from the worker's memory, not only unused
    assert len(he.encrypt_columns(secret, block)) == 1  # and loaded again on the next use
    if he._worker_timer is not None:
        he._worker_timer.cancel()


def test_a_worker_s_own_timer_drops_an_idle_key(monkeypatch):
    if he._worker_timer is not None:
        he._worker_timer.cancel()
    monkeypatch.setattr(he, "_worker_timer", None)
    monkeypatch.setattr(he, "WORKER_KEY_IDLE_S", 0.2)
    keys = he.new_keys()
    he.encrypt_columns(base64.b64decode(keys.secret), he.padded(np.zeros((3, 1)), 0))
    deadline = time.monotonic() + 10
    while he._worker_key is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert he._worker_key is None


class _Workers:
    """What _encrypt_all needs of a JobContext: its worker count and ``compute``."""

    def __init__(self, workers: int, fail: bool = False):
        self.workers, self.fail, self.calls = workers, fail, []

    async def compute(self, fn, *args):
        self.calls.append(args[1].shape[1])
        if self.fail:
            raise RuntimeError("a worker process died")
        return await asyncio.to_thread(fn, *args)


@pytest.mark.parametrize("features, workers, calls", [
    (3, 1, [3]), (3, 2, [2, 1]), (3, 3, [1, 1, 1]),
    (11, 2, [4, 4, 2, 1]),  # more features than a round: rounds of 8, each split over the workers
])
async def test_the_ciphertexts_come_in_batch_and_feature_order_whatever_the_workers(features, workers, calls):
    keys = he.new_keys()
    x = np.random.default_rng(4).normal(0, 1, (he.SLOTS + 5, features))
    made: asyncio.Queue = asyncio.Queue()
    ctx = _Workers(workers)
    await he._encrypt_all(ctx, base64.b64decode(keys.secret), x, made)
    assert ctx.calls == calls * 2  # per batch
    assert all(n <= he.in_flight(workers) for n in calls)
    for b in range(2):
        block = he.padded(x, b)
        for j in range(features):
            assert np.abs(he.decrypt(keys.context, made.get_nowait(), he.SLOTS) - block[:, j]).max() < 1e-6
    assert made.empty()


async def test_a_worker_that_fails_hands_its_error_to_the_sender():
    made: asyncio.Queue = asyncio.Queue()
    await he._encrypt_all(_Workers(2, fail=True), b"secret", np.zeros((5, 2)), made)
    error = made.get_nowait()
    assert isinstance(error, RuntimeError) and "died" in str(error) and made.empty()
