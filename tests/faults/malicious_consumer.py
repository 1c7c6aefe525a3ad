"""A consumer that runs a modified compute node, for the privacy tests:
``python -m tests.faults.malicious_consumer``.

It is rdx's compute node unchanged but for its job types (the ``job_types`` seam of
``services.compute.app.build``): as the consumer of a psi or psi_cardinality job it deviates from
the protocol the way the job's ``params.attack`` says -- the consumer writes its own job's params,
so a dishonest one can put anything there, and the providers' nodes must not care (and, as the
consumer of a supply_chain job, the same with ``supply_chain``):

- ``huge_set``: announces a set of 10^12 elements (a provider that allocated from it would die);
- ``non_key_column``: asks to match on ``params.key``, a column the listing does not offer as a
  join key, while masking its own keys (so its own node does not stop it);
- ``below_min_group``: sends a single key and skips its own minimum-group-size check;
- ``repeat_reference`` (supply_chain): 40 records of one reference with amounts 100.50, 101.50 ...,
  its own node's one-record-per-reference check removed -- the counterpart whose amount is among
  them would show it as the one record that agrees;
- ``mask_each`` (psi_cardinality): masks every element with its own exponent, so that, were the
  provider to return the doubly-masked elements, it could test each one against the provider's
  set -- membership, not a count (what it learns is written to the log as ``LEARNED:``);
- chosen rows (he_scoring): d + 1 rows of its choosing (0 and the unit vectors) would give the
  model's intercept and every weight; it needs no code change, only the data, so the consumer of
  an ``he_scoring`` job is honest code, recorded;
- differencing (aggregation): histograms whose edges move by one record's width between jobs;
  again only the params deviate, and the consumer of an ``aggregation`` job is recorded.

Every byte it receives on a job's channels (headers and bodies, after decryption) is appended to
``$RDX_ATTACK_LOG/<job>.bin`` so that the test can check that no form of the provider's canary
ever reached it. As a provider it is honest.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from services.compute import psi_kernel as kernel
from services.compute.jobtypes import JOB_TYPES
from services.compute.jobtypes.aggregation import AggregationJob
from services.compute.jobtypes.base import JobContext, JobRefused, Message, Outcome, PeerLost, expect
from services.compute.jobtypes.he_scoring import HeScoringJob
from services.compute.jobtypes.psi import MATCH, PsiCardinalityJob, PsiJob, prepare_keys
from services.compute.jobtypes.supply_chain import SupplyChainJob


class _Recording:
    """A channel that appends everything it receives to the attack log."""

    def __init__(self, chan, log: Path):
        self.chan, self.log, self.peer = chan, log, chan.peer

    async def send(self, kind, body=b"", **header):
        await self.chan.send(kind, body, **header)

    async def recv(self) -> Message:
        msg = await self.chan.recv()
        with open(self.log, "ab") as f:
            f.write(msg.kind.encode() + json.dumps(msg.header, sort_keys=True).encode() + msg.body)
        return msg

    def transcript(self):
        return self.chan.transcript()

    async def close(self):
        await self.chan.close()


def _instrument(ctx: JobContext, *, own_key: bool = True) -> str:
    attack = str(ctx.spec.params.get("attack") or "")
    log = Path(os.environ["RDX_ATTACK_LOG"]) / f"{ctx.spec.job}.bin"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    real_channel, real_load = ctx._channel, ctx._load_local

    async def channel(peer):
        return _Recording(await real_channel(peer), log)

    async def load_local(dataset, columns):
        own = ctx.dataset_key(dataset)  # its own key column, whatever params.key says
        loaded = await real_load(dataset, [own])
        values = loaded.columns.pop(own)
        if attack == "below_min_group":
            values = values[:1]
        loaded.columns.update({c: list(values) for c in columns})
        return loaded

    ctx._channel = channel
    if own_key:
        ctx._load_local = load_local
    return attack


async def _drain(chan) -> None:
    """Reads whatever the provider still sends until it goes away (PeerLost: the lifecycle tries
    again, as an honest node would, until the chain says the job ended) or stops the protocol."""
    while (await chan.recv()).kind != "abort":
        pass
    raise JobRefused("the provider stopped the protocol")


class _Deviating:
    """The consumer's side as ``params.attack`` says, else the honest one of the job type."""

    async def _consumer(self, ctx: JobContext) -> Outcome:
        attack = _instrument(ctx)
        if attack == "huge_set":
            chan = await ctx.channel(ctx.spec.inputs[0].provider)
            await chan.send("start", n=10**12)
            await _drain(chan)
        if attack == "mask_each":
            return await _mask_each(ctx)
        return await super()._consumer(ctx)


class DeviatingPsi(_Deviating, PsiJob):
    pass


class DeviatingPsiCardinality(_Deviating, PsiCardinalityJob):
    pass


class DeviatingSupplyChain(SupplyChainJob):
    """``repeat_reference``: its own check of one record per reference removed."""

    attack = ""

    async def run(self, ctx: JobContext) -> Outcome:
        if ctx.is_consumer:
            self.attack = _instrument(ctx, own_key=False)
        return await super().run(ctx)

    def _check_own(self, refs: list[str]) -> None:
        if self.attack != "repeat_reference":
            super()._check_own(refs)


class _Recorded:
    """The job type's own consumer, every byte it receives appended to the attack log."""

    async def run(self, ctx: JobContext) -> Outcome:
        if ctx.is_consumer:
            _instrument(ctx, own_key=False)
        return await super().run(ctx)


class RecordedAggregation(_Recorded, AggregationJob):
    pass


class RecordedHeScoring(_Recorded, HeScoringJob):
    pass


async def _mask_each(ctx: JobContext) -> Outcome:
    """psi_cardinality with one exponent per element: H(x_i)^{a_i}. If the provider sends back the
    doubly-masked elements (H(x_i)^{a_i b}, shuffled) and H(y)^b, the consumer tests each x_i:
    x_i is in Y iff H(y)^{b a_i} is among them for some y. What it learned that way is written to
    the attack log as ``LEARNED:<json list>``; the test asserts it learned nothing."""
    dataset = ctx.spec.params["dataset"]
    loaded = await ctx.load_local(dataset, [ctx.dataset_key(dataset)])
    keys = await asyncio.to_thread(prepare_keys, loaded.columns.popitem()[1])
    chan = await ctx.channel(ctx.spec.inputs[0].provider)
    scalars = [kernel.new_scalar() for _ in keys]
    await chan.send("start", n=len(keys))
    await expect(chan, "start")
    await chan.send("xa", b"".join(kernel.hash_and_mask(a, [k]) for a, k in zip(scalars, keys)), off=0)
    await chan.send("xa_done", n=len(keys))
    got: dict[str, bytearray] = {"yb": bytearray(), "xab": bytearray()}
    ended: set[str] = set()
    a0 = kernel.new_scalar()
    try:
        while ended != {"yb_done", "xab_done"}:
            msg = await chan.recv()
            if msg.kind in got:
                got[msg.kind] += msg.body
            elif msg.kind in ("yb_done", "xab_done"):
                ended.add(msg.kind)
                if msg.kind == "yb_done" and "xab" not in ended:  # a provider that wants H(y)^ba back
                    await chan.send("yba", kernel.mask_blob(a0, bytes(got["yb"]), MATCH), off=0)
                    await chan.send("yba_done", n=len(got["yb"]) // kernel.POINT)
            else:  # count, abort, or a protocol this attack does not know: nothing to test against
                break
    except PeerLost:
        pass
    learned = []
    if got["xab"] and got["yb"]:
        back = {bytes(got["xab"][i:i + MATCH]) for i in range(0, len(got["xab"]), MATCH)}
        for a, k in zip(scalars, keys):
            if any(x in back for x in _chunks(kernel.mask_blob(a, bytes(got["yb"]), MATCH), MATCH)):
                learned.append(k.decode())
    with open(Path(os.environ["RDX_ATTACK_LOG"]) / f"{ctx.spec.job}.bin", "ab") as f:
        f.write(b"LEARNED:" + json.dumps(sorted(learned)).encode())
    # It leaves the ending to the provider (racing it with jobs.Fail would end the job the same way,
    # refunded and without a result, but under the consumer's reason): the kill switch cancels this.
    await asyncio.sleep(max(ctx.spec.deadline - time.time(), 0))
    raise JobRefused("the deviating consumer stops here")


def _chunks(blob: bytes, width: int) -> list[bytes]:
    return [blob[i:i + width] for i in range(0, len(blob), width)]


if __name__ == "__main__":
    from services.compute.app import build
    from services.compute.settings import ComputeSettings

    build(ComputeSettings(), job_types={**JOB_TYPES, "psi": DeviatingPsi, "psi_cardinality": DeviatingPsiCardinality,
                                        "supply_chain": DeviatingSupplyChain, "aggregation": RecordedAggregation,
                                        "he_scoring": RecordedHeScoring}).run()
