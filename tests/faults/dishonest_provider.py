"""A provider that wants to be paid more than it delivered, or paid without delivering, for the
fair-exchange tests (issue 16): ``python -m tests.faults.dishonest_provider``.

It is rdx's compute node unchanged but for its ``psi`` job type (the ``job_types`` seam of
``services.compute.app.build``): as the provider of a psi job whose ``params.cheat_provider``
says so, it runs the protocol honestly and then

- ``inflate_records``: attests ten times the records it used (``records_used`` and its count
  of its input), so that a per-record price would charge ten times as much;
- ``withhold_key``: attests the hash of its release key, as the protocol shows the consumer, but
  keeps the key itself: the chain locks the job and waits for a key that never comes.

And, for any job type, through its job manager (``services.compute.app.JobManager``), a provider
whose node stops between the lock and its release: with ``params.cheat_provider`` =
``stall_release`` its node keeps the key as an honest one does but does not publish it until it
is restarted (as an honest node: ``python -m services.compute``), which is then the node's job.

As a consumer, and as a provider without ``params.cheat_provider``, it is honest.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

from services.compute import app

from services.compute.jobtypes import JOB_TYPES
from services.compute.jobtypes.base import JobContext, Outcome
from services.compute.jobtypes.psi import PsiJob
from services.compute.lifecycle import JobManager


class DishonestProviderPsi(PsiJob):
    async def _provider(self, ctx: JobContext) -> Outcome:
        out = await super()._provider(ctx)
        cheat = str(ctx.spec.params.get("cheat_provider") or "")
        if cheat == "inflate_records":
            return replace(out, records_used=out.records_used * 10,
                           records={asset: n * 10 for asset, n in out.records.items()})
        if cheat == "withhold_key" and out.release_key is not None:
            return replace(out, releases={ctx.member: hashlib.sha256(out.release_key).hexdigest()}, release_key=None)
        return out


class StallingReleaseManager(JobManager):
    async def _release(self, spec, key: bytes) -> None:
        if spec.params.get("cheat_provider") == "stall_release":
            await asyncio.Event().wait()  # until the node stops: the key stays in its held state only
        await super()._release(spec, key)


if __name__ == "__main__":
    from services.compute.settings import ComputeSettings

    app.JobManager = StallingReleaseManager
    app.build(ComputeSettings(), job_types={**JOB_TYPES, "psi": DishonestProviderPsi}).run()
