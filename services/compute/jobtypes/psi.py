"""PSI and PSI-cardinality between a consumer and one provider: ECDH-PSI over Curve25519.

Protocol of ``psi`` (``psi_cardinality``'s, in which the provider counts, is PsiCardinalityJob's
docstring; C the consumer with set X, P the provider with set Y; a, b fresh secret scalars per
run; H the hash to the prime-order subgroup of Curve25519 in psi_kernel; every message on the
authenticated, encrypted peer channel)::

    C → P  start   {n: |X|}
    P → C  start   {n: |Y|}         (P first checks |X| against its bound and minimum group size)
    C → P  xa      H(x)^a for x in X, deduplicated and shuffled by C, in batches   (then xa_done)
    P → C  yb      H(y)^b for y in Y, deduplicated and shuffled by P, in batches   (then yb_done)
    P → C  xab     (H(x)^a)^b, first 16 bytes, for every xa element, in C's order, held back:
                   XORed with an AES-256-CTR keystream of P's fresh release key K
                   (then xab_done {release: SHA-256(K)})
    C → P  finish  {commitment: ""}   (C holds nothing it can match yet)
    P → C  finished
    both   attest the transcripts' hash, |Y| as the records used, SHA-256(K): the chain locks the job
    P      publishes K on chain (jobs.Release); that tx completes and settles the job
    C      opens xab with K, computes (H(y)^b)^a, first 16 bytes, matches, and seals its result

C learns the intersection and |Y|; P learns |X| and nothing else; both learn nothing more under
the decisional Diffie-Hellman assumption on Curve25519 with H modelled as a random oracle, if
both follow the protocol (semi-honest). P cannot see the intersection's size, so the minimum
group size of a psi result is the consumer's node's check, beyond |X| >= k (docs/compute.md).
Sixteen bytes of a doubly-masked element leave a chance of a false match of at most
|X|·|Y|/2^128. The result hash both nodes attest is the SHA-256 of the two directions'
transcripts (every message), which both saw. Fair exchange (docs/compute.md): C cannot match
before the chain holds K, which P publishes only once the job is locked (C can no longer end it
without paying); P is paid only in the tx that publishes the K whose hash C saw.

Large sets go in batches (RDX_PSI_BATCH elements, default 16384: 512 KiB a message) with at
most ``workers + 1`` batches in flight per direction, so memory stays at the two sets' masked
forms (48 bytes an element on C; 16 an element of each set on P for cardinality) plus a few
batches, and no array is sized from a peer's number before this node's policy has bounded it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

import numpy as np

from services.compute import psi_kernel as kernel
from services.compute.commitment import canonical_value
from services.compute.jobtypes.base import (Channel, JobContext, JobRefused, JobSpec, JobType, Outcome, ProtocolError,
                                             expect, expect_finish, goodbye)
from services.compute import policy  # the module, not its names: policy.py imports jobtypes.base
from services.compute.release import (close_held_back, held_back, key_hash, new_key, open_held_back, release_hash,
                                      released_key)

MATCH = 16  # bytes of a doubly-masked element that are compared


def normalise_keys(values: list[Any]) -> tuple[list[bytes], int]:
    """Keys as UTF-8 bytes (canonical text, surrounding spaces stripped), nulls and blanks dropped,
    duplicates removed; returns (keys, number dropped). Order: first occurrence."""
    keys: dict[bytes, None] = {}
    dropped = 0
    for v in values:
        text = canonical_value(v)
        if text is None or not text.strip():
            dropped += 1
            continue
        keys[text.strip().encode("utf-8")] = None
    return list(keys), dropped


def prepare_keys(values: list[Any], seed: bytes | None = None) -> list[bytes]:
    """Normalised, deduplicated and shuffled: what a party masks and sends (run off the event loop).
    Empties ``values`` as soon as it is read, so a large column is not held twice. With ``seed``
    (32 random bytes) the order is the one SHAKE-256 of it gives: the same keys shuffle the same
    way again, which lets a restarted consumer's node list its keys in the order it sent them."""
    keys, _ = normalise_keys(values)
    values.clear()
    return shuffled(keys, hashlib.shake_256(seed).digest(8 * len(keys)) if seed is not None else None)


def shuffled(items: list, rng_bytes: bytes | None = None) -> list:
    """A uniformly random permutation from the OS's CSPRNG (argsort of 64-bit random keys)."""
    if len(items) < 2:
        return list(items)
    keys = np.frombuffer(rng_bytes or os.urandom(8 * len(items)), dtype=np.uint64)
    return [items[i] for i in np.argsort(keys, kind="stable")]


def shuffle_blob(blob: bytes, width: int) -> bytes:
    n = len(blob) // width
    if n < 2:
        return blob
    arr = np.frombuffer(blob, dtype=f"V{width}")
    order = np.argsort(np.frombuffer(os.urandom(8 * n), dtype=np.uint64), kind="stable")
    return arr[order].tobytes()


def match_positions(a: bytes, b: bytes) -> np.ndarray:
    """Indices i of a's 16-byte items that also occur among b's (sort and binary search)."""
    if not a or not b:
        return np.zeros(0, dtype=np.int64)
    A = np.frombuffer(a, dtype="<u8").reshape(-1, 2)
    B = np.frombuffer(b, dtype="<u8").reshape(-1, 2)
    order = np.argsort(B[:, 0], kind="stable")
    prefix, suffix = B[order, 0], B[order, 1]
    lo = np.searchsorted(prefix, A[:, 0], "left")
    hi = np.searchsorted(prefix, A[:, 0], "right")
    ok = np.zeros(len(A), dtype=bool)
    one = (hi - lo) == 1
    ok[one] = suffix[lo[one]] == A[one, 1]
    for i in np.nonzero((hi - lo) > 1)[0]:  # two of b's items share 64 bits: rare, checked in full
        ok[i] = bool((suffix[lo[i]:hi[i]] == A[i, 1]).any())
    return np.nonzero(ok)[0]


def result_hash(spec: JobSpec, c2p: str, p2c: str) -> str:
    return hashlib.sha256(f"rdx/psi/v1/result\n{spec.job}\n{spec.type}\n{c2p}\n{p2c}".encode()).hexdigest()


class _Pipeline:
    """Batches through the worker pool with a bounded number in flight, results in submission order."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.slots = asyncio.Semaphore(ctx.workers + 1)

    async def run(self, fn, *args) -> Any:
        async with self.slots:
            return await self.ctx.compute(fn, *args)


def _check_count(header: dict, body: bytes, width: int, total: int) -> tuple[int, int]:
    off = header.get("off")
    if not isinstance(off, int) or len(body) % width:
        raise ProtocolError("malformed batch")
    n = len(body) // width
    if off < 0 or off + n > total:
        raise ProtocolError("batch outside the announced set")
    return off, n


class PsiJob(JobType):
    """``psi``: the consumer learns the intersection of its keys with the provider's."""

    name = "psi"
    cardinality_only = False
    _keys: list[bytes] | None = None  # the consumer's keys of this run, for its finish in this process

    def check(self, spec: JobSpec) -> None:
        if len(spec.inputs) != 1:
            raise JobRefused(f"{spec.type} takes exactly one provider input")
        if spec.inputs[0].provider == spec.consumer:
            raise JobRefused(f"{spec.type} needs two members; the consumer owns the input")
        if sorted(spec.participants) != sorted({spec.consumer, spec.inputs[0].provider}):
            raise JobRefused(f"{spec.type} runs between the consumer and the provider only")
        if not isinstance(spec.params.get("dataset"), str):
            raise JobRefused(f"{spec.type} needs params.dataset: the consumer's local dataset id")
        if "key" in spec.params and not isinstance(spec.params["key"], str):
            raise JobRefused("params.key must be a column name")

    def _result(self, keys: list[bytes], positions: np.ndarray, n_c: int, n_p: int) -> bytes:
        result: dict[str, Any]
        if self.cardinality_only:
            result = {"cardinality": int(len(positions))}
        else:
            result = {"intersection": sorted(keys[i].decode("utf-8") for i in positions)}
        result.update(consumer_set_size=n_c, provider_set_size=n_p)
        return json.dumps(result, sort_keys=True).encode()

    def _key_column(self, ctx: JobContext, dataset: str) -> str:
        column = ctx.spec.params.get("key") or ctx.dataset_key(dataset)
        if not column:
            raise JobRefused(f"no key column: give params.key or configure one for {dataset}")
        return column

    async def _consumer_keys(self, ctx: JobContext, seed: bytes | None = None,
                             kept: dict | None = None) -> tuple[list[bytes], dict]:
        """The consumer's keys, shuffled by ``seed``, and what lists them again in that order: the
        dataset's commitment, the key column and the seed. With ``kept`` (that, from a run before a
        restart): the same keys in the same order, or JobRefused if the dataset has changed since."""
        dataset = ctx.spec.params["dataset"]
        column = kept["column"] if kept else self._key_column(ctx, dataset)
        ctx.progress("loading")
        loaded = await ctx.load_local(dataset, [column])
        if kept and loaded.commitment != kept["commitment"]:
            raise JobRefused(f"{dataset} changed after the run: its keys are no longer the ones matched")
        seed = bytes.fromhex(kept["seed"]) if kept else seed
        keys = await asyncio.to_thread(prepare_keys, loaded.columns.popitem()[1], seed)
        return keys, {"commitment": loaded.commitment, "column": column, "seed": seed.hex() if seed else None}

    async def _provider_keys(self, ctx: JobContext, ref) -> list[bytes]:
        column = self._key_column(ctx, ref.asset)
        ctx.policy.match_column(ref.asset, column)  # never a column the listing does not offer as a join key
        ctx.progress("loading")
        loaded = await ctx.load_input(ref, [column])
        return await asyncio.to_thread(prepare_keys, loaded.columns.popitem()[1])

    async def run(self, ctx: JobContext) -> Outcome:
        self.check(ctx.spec)
        if ctx.is_consumer:
            return await self._consumer(ctx)
        return await self._provider(ctx)

    # -- the consumer's side ------------------------------------------------------------------------
    async def _consumer(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        keys, listed = await self._consumer_keys(ctx, os.urandom(32))
        n_c = len(keys)
        provider = spec.inputs[0].provider
        chan = await ctx.channel(provider)
        scalar = kernel.new_scalar()
        await chan.send("start", n=n_c)
        msg = await expect(chan, "start")
        n_p = ctx.policy.peer_size(msg.header.get("n"), "provider's set size")  # bounded before yab is allocated
        pipe = _Pipeline(ctx)
        xab = bytearray(MATCH * n_c)
        yab = bytearray(MATCH * n_p)
        total = 2 * n_c + n_p
        done = {"xa": 0, "xab": 0, "yab": 0}

        def report(phase: str) -> None:
            ctx.progress(phase, done["xa"] + done["xab"] + done["yab"], total)

        def sent_xa(n: int) -> None:
            done["xa"] += n
            report("masking")

        async def remask_yb(off: int, body: bytes) -> None:
            out = await pipe.run(kernel.mask_blob, scalar, body, MATCH)
            yab[MATCH * off:MATCH * off + len(out)] = out
            done["yab"] += len(out) // MATCH
            report("matching")

        sender = asyncio.ensure_future(_stream_masked(ctx, pipe, chan, scalar, keys, "xa", sent_xa))
        remasks = _Bounded(ctx.workers + 1)
        got = {"xab_done": False, "yb_done": False}
        release = None
        try:
            while not (got["xab_done"] and got["yb_done"]):
                msg = await chan.recv()
                if msg.kind == "xab_done":
                    release = msg.header.get("release")
                if msg.kind == "xab":
                    off, n = _check_count(msg.header, msg.body, MATCH, n_c)
                    xab[MATCH * off:MATCH * (off + n)] = msg.body
                    done["xab"] += n
                    report("matching")
                elif msg.kind == "yb":
                    off, _ = _check_count(msg.header, msg.body, kernel.POINT, n_p)
                    await remasks.add(remask_yb(off, msg.body))
                elif msg.kind in got:
                    got[msg.kind] = True
                elif msg.kind == "abort":
                    raise JobRefused(f"the provider stopped the protocol: {str(msg.header.get('reason'))[:200]}")
                else:
                    raise ProtocolError(f"unexpected {msg.kind}")
                remasks.check()
                if sender.done():
                    sender.result()
            await sender
            await remasks.drain()
        except BaseException:
            sender.cancel()
            remasks.cancel()
            raise
        if done["xab"] != n_c or done["yab"] != n_p:
            raise ProtocolError("the provider's batches do not add up to the announced sets")
        release = release_hash({"release": release})
        # H(x)^ab is held back under the provider's key: nothing can be matched until the chain has
        # recorded both attestations (this transcript, these counts, that key hash) and the key.
        c2p, p2c = await close_held_back(chan, ctx)
        ctx.progress("matching", total, total)
        # What finish needs, kept by the node across a restart (0600): H(x)^ab as it came, held back;
        # (H(y)^b)^a; and how to list this node's keys again in the order sent, not the keys themselves.
        self._keys = keys
        head = json.dumps({"n_c": n_c, "n_p": n_p, "release": release, "keys": listed}).encode()
        pending = b"".join([head, b"\n", xab, yab])
        return Outcome(result_hash(spec, c2p, p2c), records_used=n_c, records={spec.inputs[0].asset: n_p},
                       releases={provider: release}, pending=pending)

    async def finish(self, ctx: JobContext, pending: bytes, released) -> None:
        ref = ctx.spec.inputs[0]
        state, xab, yab = _unpack(pending)
        key = released_key(released, ref.provider, state["release"])
        # This run's keys, or, on a node restarted since, the same keys listed again in the same order.
        keys = self._keys if self._keys is not None else (await self._consumer_keys(ctx, kept=state["keys"]))[0]
        opened = await asyncio.to_thread(open_held_back, key, xab)
        positions = await asyncio.to_thread(match_positions, opened, yab)
        size = int(len(positions))
        if 0 < size < ref.min_group_size:  # this node keeps no result below the listing's minimum
            raise JobRefused(f"the intersection is below the listing's minimum group size ({ref.min_group_size})")
        await ctx.commit_result(await asyncio.to_thread(self._result, keys, positions, state["n_c"], state["n_p"]))
        done = 2 * state["n_c"] + state["n_p"]
        ctx.progress("done", done, done)

    # -- the provider's side ------------------------------------------------------------------------
    async def _provider(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        ref = ctx.my_inputs[0]
        keys = await self._provider_keys(ctx, ref)
        n_p = len(keys)
        chan = await ctx.channel(spec.consumer)
        scalar = kernel.new_scalar()
        msg = await expect(chan, "start")
        # This node's own limits, before it sends anything: the consumer's announced size is bounded
        # and a set below the minimum group size is refused.
        n_c = ctx.policy.peer_size(msg.header.get("n"), "consumer's set size")
        ctx.policy.consumer_set(ref.asset, n_c)
        await chan.send("start", n=n_p)
        pipe = _Pipeline(ctx)
        total = n_p + n_c
        done = {"yb": 0, "xab": 0}
        release_key = new_key()  # H(x)^ab goes out under it; the chain releases it once the job is locked

        def report() -> None:
            ctx.progress("masking", done["yb"] + done["xab"], total)

        def sent_yb(n: int) -> None:
            done["yb"] += n
            report()

        async def remask_xa(off: int, body: bytes) -> None:
            out = await pipe.run(kernel.mask_blob, scalar, body, MATCH)
            await chan.send("xab", held_back(release_key, off, out), off=off)
            done["xab"] += len(out) // MATCH
            report()

        sender = asyncio.ensure_future(_stream_masked(ctx, pipe, chan, scalar, keys, "yb", sent_yb))
        remasks = _Bounded(ctx.workers + 1)
        received = 0
        try:
            while True:
                msg = await chan.recv()
                if msg.kind == "xa":
                    off, n = _check_count(msg.header, msg.body, kernel.POINT, n_c)
                    received += n
                    await remasks.add(remask_xa(off, msg.body))
                elif msg.kind == "xa_done":
                    break
                elif msg.kind == "abort":
                    raise JobRefused(f"the consumer stopped the protocol: {str(msg.header.get('reason'))[:200]}")
                else:
                    raise ProtocolError(f"unexpected {msg.kind}")
                remasks.check()
                if sender.done():
                    sender.result()
            await remasks.drain()
            if received != n_c or done["xab"] != n_c:
                raise ProtocolError("the consumer's batches do not add up to its announced set")
            await chan.send("xab_done", n=n_c, release=key_hash(release_key))
            await sender
        except BaseException:
            sender.cancel()
            remasks.cancel()
            raise
        await expect_finish(chan)
        p2c, c2p = chan.transcript()
        await chan.send("finished")
        await goodbye(ctx.member, [chan])
        ctx.progress("done", total, total)
        return Outcome(result_hash(spec, c2p, p2c), records_used=n_p, records={ref.asset: n_p},
                       release_key=release_key)


class PsiCardinalityJob(PsiJob):
    """``psi_cardinality``: the consumer learns only how many of its keys the provider holds, and
    the provider counts them itself, so that it can hold back a count below the minimum group size.

    Protocol (a, b fresh scalars per run; every message on the authenticated, encrypted channel)::

        C → P  start   {n: |X|}
        P → C  start   {n: |Y|}          (P first bounds |X| and refuses |X| below its minimum group size)
        P → C  yb      H(y)^b, deduplicated and shuffled by P, in batches               (then yb_done)
        C → P  xa      H(x)^a, deduplicated, in batches                                 (then xa_done)
        C → P  yba     (H(y)^b)^a, first 16 bytes, all of them shuffled again by C      (then yba_done)
        P      checks both are the announced sizes with no repeated element, and counts
               c = |{x : H(x)^ab ∈ yba}|; if c is below the listing's minimum group size
               (k > 1) P aborts the job on chain and sends nothing more
        P → C  count   c as 16 bytes XORed with an AES-256-CTR keystream of P's fresh release key K
                       {release: SHA-256(K)}
        C → P  finish  {commitment: ""}
        P → C  finished
        both   attest; the chain locks the job; P publishes K (jobs.Release), which settles it;
        C      opens c with K and seals its result

    The doubly-masked consumer elements (H(x)^ab) never leave P, so a consumer that masks each of
    its elements with an exponent of its own (H(x_i)^a_i) gets nothing back to test them against:
    it learns c, or that c is below k -- as an honest one. What is revealed, and to whom, is said
    in docs/compute.md (threat model): C learns c and |Y|; P learns |X| and c.
    """

    name = "psi_cardinality"
    cardinality_only = True

    async def _consumer(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        keys, _ = await self._consumer_keys(ctx)
        n_c = len(keys)
        chan = await ctx.channel(spec.inputs[0].provider)
        scalar = kernel.new_scalar()
        await chan.send("start", n=n_c)
        n_p = ctx.policy.peer_size((await expect(chan, "start")).header.get("n"), "provider's set size")
        pipe = _Pipeline(ctx)
        yba = bytearray(MATCH * n_p)
        done = {"xa": 0, "yba": 0}
        total = n_c + n_p

        def sent_xa(n: int) -> None:
            done["xa"] += n
            ctx.progress("masking", done["xa"] + done["yba"], total)

        async def remask_yb(off: int, body: bytes) -> None:
            out = await pipe.run(kernel.mask_blob, scalar, body, MATCH)
            yba[MATCH * off:MATCH * off + len(out)] = out
            done["yba"] += len(out) // MATCH
            ctx.progress("masking", done["xa"] + done["yba"], total)

        remasks = _Bounded(ctx.workers + 1)
        received = 0

        async def on_message(msg) -> bool:
            nonlocal received
            if msg.kind == "yb_done":
                return True
            if msg.kind != "yb":
                raise ProtocolError(f"unexpected {msg.kind}")
            off, n = _check_count(msg.header, msg.body, kernel.POINT, n_p)
            if off != received:
                raise ProtocolError("the provider's batches are out of order")
            received += n
            await remasks.add(remask_yb(off, msg.body))
            return False

        sender = asyncio.ensure_future(_stream_masked(ctx, pipe, chan, scalar, keys, "xa", sent_xa))
        await _exchange(chan, "provider", sender, remasks, on_message)
        if received != n_p or done["yba"] != n_p:
            raise ProtocolError("the provider's batches do not add up to its announced set")
        mixed = await asyncio.to_thread(shuffle_blob, bytes(yba), MATCH)  # P must not link yba to its yb
        del yba
        for off in range(0, len(mixed), MATCH * ctx.batch):
            await chan.send("yba", mixed[off:off + MATCH * ctx.batch], off=off // MATCH)
        await chan.send("yba_done", n=n_p)
        del mixed
        msg = await expect(chan, "count")  # held back: the count under the provider's release key
        release = release_hash(msg.header)
        if len(msg.body) != MATCH:
            raise ProtocolError("bad count")
        held = bytes(msg.body)
        c2p, p2c = await close_held_back(chan, ctx)
        ref = spec.inputs[0]
        # What finish needs, kept by the node across a restart (0600): the count as it came, held back.
        pending = json.dumps({"n_c": n_c, "n_p": n_p, "release": release, "held": held.hex()}).encode()
        return Outcome(result_hash(spec, c2p, p2c), records_used=n_c, records={ref.asset: n_p},
                       releases={ref.provider: release}, pending=pending)

    async def finish(self, ctx: JobContext, pending: bytes, released) -> None:
        ref = ctx.spec.inputs[0]
        state = json.loads(pending)
        n_c, n_p = state["n_c"], state["n_p"]
        key = released_key(released, ref.provider, state["release"])
        count = int.from_bytes(open_held_back(key, bytes.fromhex(state["held"])), "big")
        if not 0 <= count <= min(n_c, n_p):
            raise ProtocolError("bad count")
        if 0 < count < ref.min_group_size:  # an honest provider never sends one; refuse it all the same
            raise ProtocolError("the provider sent a count below the listing's minimum group size")
        await ctx.commit_result(json.dumps({"cardinality": count, "consumer_set_size": n_c,
                                            "provider_set_size": n_p}, sort_keys=True).encode())
        ctx.progress("done", n_c + n_p, n_c + n_p)

    async def _provider(self, ctx: JobContext) -> Outcome:
        spec = ctx.spec
        ref = ctx.my_inputs[0]
        keys = await self._provider_keys(ctx, ref)
        n_p = len(keys)
        chan = await ctx.channel(spec.consumer)
        scalar = kernel.new_scalar()
        n_c = ctx.policy.peer_size((await expect(chan, "start")).header.get("n"), "consumer's set size")
        ctx.policy.consumer_set(ref.asset, n_c)
        await chan.send("start", n=n_p)
        pipe = _Pipeline(ctx)
        xab = bytearray(MATCH * n_c)
        yba = bytearray(MATCH * n_p)
        got = {"xa": 0, "yba": 0}
        total = n_p + n_c
        sent = {"yb": 0}

        def sent_yb(n: int) -> None:
            sent["yb"] += n
            ctx.progress("masking", sent["yb"] + got["xa"], total)

        async def remask_xa(off: int, body: bytes) -> None:
            out = await pipe.run(kernel.mask_blob, scalar, body, MATCH)
            xab[MATCH * off:MATCH * off + len(out)] = out
            ctx.progress("masking", sent["yb"] + got["xa"], total)

        remasks = _Bounded(ctx.workers + 1)
        ended: set[str] = set()

        async def on_message(msg) -> bool:
            if msg.kind in ("xa_done", "yba_done"):
                ended.add(msg.kind)
                return ended == {"xa_done", "yba_done"}
            if msg.kind not in got:
                raise ProtocolError(f"unexpected {msg.kind}")
            width, size = (kernel.POINT, n_c) if msg.kind == "xa" else (MATCH, n_p)
            off, n = _check_count(msg.header, msg.body, width, size)
            if off != got[msg.kind] or msg.kind + "_done" in ended:
                raise ProtocolError("the consumer's batches are out of order")
            got[msg.kind] += n
            if msg.kind == "xa":
                await remasks.add(remask_xa(off, msg.body))
            else:
                yba[MATCH * off:MATCH * (off + n)] = msg.body
            return False

        sender = asyncio.ensure_future(_stream_masked(ctx, pipe, chan, scalar, keys, "yb", sent_yb))
        await _exchange(chan, "consumer", sender, remasks, on_message)
        if got["xa"] != n_c or got["yba"] != n_p:
            raise ProtocolError("the consumer's batches do not add up to the announced sets")
        if _repeats(bytes(xab)) or _repeats(bytes(yba)):  # a repeated element would be counted twice
            raise policy.PolicyViolation("the consumer's masked elements repeat")
        count = int(len(await asyncio.to_thread(match_positions, bytes(xab), bytes(yba))))
        del xab, yba
        k = ctx.policy.of(ref.asset).min_group_size
        if k > 1 and count < k:  # 0 too: else a probe of one element would tell 0 from 1
            raise policy.PolicyViolation(f"the intersection is below the minimum group size of {ref.asset} ({k})")
        release_key = new_key()  # the count goes out under it; the chain releases it once the job is locked
        await chan.send("count", held_back(release_key, 0, count.to_bytes(MATCH, "big")),
                        release=key_hash(release_key))
        await expect_finish(chan)
        p2c, c2p = chan.transcript()
        await chan.send("finished")
        await goodbye(ctx.member, [chan])
        ctx.progress("done", total, total)
        return Outcome(result_hash(spec, c2p, p2c), records_used=n_p, summary={"matched": count},
                       records={ref.asset: n_p}, release_key=release_key)


async def _exchange(chan: Channel, peer_role: str, sender: asyncio.Future, remasks: "_Bounded", on_message) -> None:
    """Hands each message from the peer to ``on_message`` (True once the last one has come) while
    ``sender`` streams this side's elements; then waits for both. A peer's abort is JobRefused."""
    try:
        while True:
            msg = await chan.recv()
            if msg.kind == "abort":
                raise JobRefused(f"the {peer_role} stopped the protocol: {str(msg.header.get('reason'))[:200]}")
            if await on_message(msg):
                break
            remasks.check()
            if sender.done():
                sender.result()
        await remasks.drain()
        await sender
    except BaseException:
        sender.cancel()
        remasks.cancel()
        raise


def _unpack(pending: bytes) -> tuple[dict, memoryview, memoryview]:
    """A psi consumer's kept state: its JSON line, then H(x)^ab held back and (H(y)^b)^a."""
    cut = pending.index(b"\n")
    state, blob = json.loads(pending[:cut]), memoryview(pending)[cut + 1:]
    n_c = MATCH * state["n_c"]
    if len(blob) != n_c + MATCH * state["n_p"]:
        raise ValueError("the kept state does not add up to its set sizes")
    return state, blob[:n_c], blob[n_c:]


def _repeats(blob: bytes) -> bool:
    if len(blob) < 2 * MATCH:
        return False
    return len(np.unique(np.frombuffer(blob, dtype="V16"))) != len(blob) // MATCH


async def _stream_masked(ctx: JobContext, pipe: _Pipeline, chan: Channel, scalar: bytes, keys: list[bytes],
                         kind: str, sent) -> None:
    """H(k)^scalar for every key, batch by batch through the workers, sent in order as ``kind``
    messages tagged with their offset, then ``<kind>_done``. At most workers + 1 batches in flight."""
    pending: list[tuple[int, asyncio.Future]] = []

    async def send_first() -> None:
        o, task = pending.pop(0)
        blob = await task
        await chan.send(kind, blob, off=o)
        sent(len(blob) // kernel.POINT)

    try:
        for off in range(0, len(keys), ctx.batch):
            batch = keys[off:off + ctx.batch]
            pending.append((off, asyncio.ensure_future(pipe.run(kernel.hash_and_mask, scalar, batch))))
            while pending and (pending[0][1].done() or len(pending) > ctx.workers + 1):
                await send_first()
        while pending:
            await send_first()
        await chan.send(f"{kind}_done", n=len(keys))
    finally:
        for _, task in pending:
            task.cancel()



class _Bounded:
    """Tasks started as messages arrive, at most ``limit`` unfinished: reading waits for a free slot
    (back-pressure to the peer through gRPC flow control). A failed task fails the protocol."""

    def __init__(self, limit: int):
        self.limit = limit
        self.tasks: list[asyncio.Task] = []

    async def add(self, coro) -> None:
        self.tasks.append(asyncio.ensure_future(coro))
        while len(self.tasks) > self.limit:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            self.check()

    def check(self) -> None:
        still = []
        for t in self.tasks:
            if t.done():
                t.result()  # raises the task's exception
            else:
                still.append(t)
        self.tasks = still

    async def drain(self) -> None:
        while self.tasks:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            self.check()

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()

