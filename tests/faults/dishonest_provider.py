"""A provider that wants to be paid more than it delivered, or paid without delivering, for the
fair-exchange tests (issue 16): ``python -m tests.faults.dishonest_provider``.

It is rdx's compute node unchanged but for its job types (the ``job_types`` seam of
``services.compute.app.build``: each of ``JOB_TYPES`` wrapped by ``dishonest``): as the provider of
a job whose ``params.cheat_provider`` says so, it runs the protocol honestly, except that

- ``inflate_records``: it attests ten times the records it used (``records_used`` and its count
  of each input), so that a per-record price would charge ten times as much;
- ``withhold_key``: it attests the hash of its release key, as the protocol shows the consumer,
  but keeps the key itself: the chain locks the job and waits for a key that never comes;
- ``seal_garbage``: what it holds back (``HELD_BACK``) goes out as random bytes of the honest
  message's length: garbage sealed under the release key whose hash it shows, which it then
  releases as an honest node does. The key matches; what it opens is garbage.

And, for any job type, through its job manager (``services.compute.app.JobManager``), a provider
whose node stops between the lock and its release: with ``params.cheat_provider`` =
``stall_release`` its node keeps the key as an honest one does but does not publish it until it
is restarted (as an honest node: ``python -m services.compute``), which is then the node's job (nor
does it send the key with its attestation: it attests without it, so the job locks).

As a consumer, and as a provider without ``params.cheat_provider``, it is honest.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import replace

from services.compute import app
from services.compute.jobtypes import JOB_TYPES
from services.compute.jobtypes.base import JobContext, JobType, Outcome
from services.compute.lifecycle import JobManager

# The messages in which a provider sends the consumer what it holds back, in every job type
# (psi, psi_cardinality, aggregation, he_scoring, its statistics mode, supply_chain).
HELD_BACK = frozenset({"xab", "count", "sum", "score", "stats", "back"})


class GarblingChannel:
    """A channel to the consumer whose held-back messages go out as random bytes of the same length
    (the transcript is of what was sent, so both sides attest the same result hash)."""

    def __init__(self, chan):
        self._chan, self.peer = chan, chan.peer

    async def send(self, kind: str, body: bytes = b"", **header) -> None:
        await self._chan.send(kind, os.urandom(len(body)) if kind in HELD_BACK else body, **header)

    def __getattr__(self, name: str):
        return getattr(self._chan, name)


def dishonest(cls: type[JobType]) -> type[JobType]:
    """``cls``, whose provider's side cheats as the job's ``params.cheat_provider`` says."""

    class Dishonest(cls):
        async def run(self, ctx: JobContext) -> Outcome:
            cheat = str(ctx.spec.params.get("cheat_provider") or "")
            if ctx.is_consumer or not cheat:
                return await super().run(ctx)
            if cheat == "seal_garbage":
                honest = ctx.channel

                async def garbling(peer: str):
                    chan = await honest(peer)
                    return GarblingChannel(chan) if peer == ctx.spec.consumer else chan
                ctx.channel = garbling
            out = await super().run(ctx)
            if cheat == "inflate_records":
                return replace(out, records_used=out.records_used * 10,
                               records={asset: n * 10 for asset, n in out.records.items()})
            if cheat == "withhold_key" and out.release_key is not None:
                return replace(out, releases={ctx.member: hashlib.sha256(out.release_key).hexdigest()},
                               release_key=None)
            return out

    Dishonest.__name__ = f"Dishonest{cls.__name__}"
    return Dishonest


class StallingReleaseManager(JobManager):
    async def _key_with_attestation(self, spec, *args):
        if spec.params.get("cheat_provider") == "stall_release":
            return None  # the key is not sent with the attestation either: the job locks and waits for it
        return await super()._key_with_attestation(spec, *args)

    async def _release(self, spec, key: bytes) -> None:
        if spec.params.get("cheat_provider") == "stall_release":
            await asyncio.Event().wait()  # until the node stops: the key stays in its held state only
        await super()._release(spec, key)


if __name__ == "__main__":
    from services.compute.settings import ComputeSettings

    app.JobManager = StallingReleaseManager
    app.build(ComputeSettings(), job_types={name: dishonest(cls) for name, cls in JOB_TYPES.items()}).run()
