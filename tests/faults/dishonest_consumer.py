"""A consumer that wants a result without paying, for the fair-exchange tests (issue 16):
``python -m tests.faults.dishonest_consumer``.

It is rdx's compute node unchanged but for its job manager (``services.compute.app.JobManager``
is replaced before ``build``): as the consumer of a job whose ``params.cheat`` says so (the
consumer writes its own job's params), at the moment its honest node would attest, it instead

- ``abort_before_lock``: holds the provider's held-back last message and, without attesting,
  aborts the job with its member's own key (``$RDX_CHEAT_MEMBER_KEY``) — walking away before the
  chain has locked the escrow;
- ``abort_after_lock``: waits until every other party has attested, sends its own attestation
  (which locks the job) and at once, together, ``jobs.Fail`` with its node key and ``jobs.Abort``
  with its member's key, hoping for a refund now that the providers' keys are about to be released (the
  last provider, which would send its key with its attestation once the consumer's is on chain,
  gives up waiting after ``lifecycle.KEY_WAIT_S`` and attests without it: the job locks).

Every answer the chain gives it is written to ``$RDX_ATTACK_LOG/<job>.json`` for the test, with
whether its node held a result for the job when it cheated (``held_result``: it would have walked
away with it). As a provider, and as a consumer without ``params.cheat``, it is honest.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from services.common.chain import TxRejected
from services.common.identity import Identity
from services.compute import app
from services.compute.lifecycle import JobManager


async def _answer(chain, who: Identity, type_: str, payload: dict) -> dict:
    try:
        await chain.submit(who, type_, payload, timeout=20)
        return {"type": type_, "code": 0, "log": ""}
    except TxRejected as exc:
        return {"type": type_, "code": exc.code, "log": exc.log}


def _log(job: str, answers: list[dict], held_result: bool) -> None:
    path = Path(os.environ["RDX_ATTACK_LOG"]) / f"{job}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"answers": answers, "held_result": held_result}))
    partial.replace(path)  # whole or absent: the test may read it at any moment


class DishonestConsumerManager(JobManager):
    async def _attest(self, spec, result_hash, records_used, records=None, releases=None, key=None) -> None:
        cheat = str(spec.params.get("cheat") or "")
        if self.member != spec.consumer or cheat not in ("abort_before_lock", "abort_after_lock"):
            return await super()._attest(spec, result_hash, records_used, records, releases, key=key)
        member = Identity.load(Path(os.environ["RDX_CHEAT_MEMBER_KEY"]))
        reason = {"job": spec.job, "reason": "the consumer changed its mind"}
        if cheat == "abort_before_lock":  # shielded: its own JobAborted cancels this task before the answer is in
            await asyncio.shield(self._logged(spec.job, [(member, "jobs.Abort", reason)]))
            return
        others = set(spec.participants) - {self.member}
        while not others <= set((await self.view.job(spec.job) or {}).get("attestations", {})):
            await asyncio.sleep(0.1)
        payload = {"job": spec.job, "result_hash": result_hash, "records_used": int(records_used),
                   "input_commitments": {}, "records": dict(records or {}), "releases": dict(releases or {})}
        await self.chain.submit(self.identity, "jobs.Attest", payload, wait=False)  # the Fail goes right behind it
        await asyncio.shield(self._logged(spec.job, [(self.identity, "jobs.Fail", reason),
                                                     (member, "jobs.Abort", reason)]))
        await super()._attest(spec, result_hash, records_used, records, releases)  # already in: marks it attested

    async def _logged(self, job: str, txs: list) -> None:
        held = self.journal.result(job) is not None  # a result on this node before the lock: it walks away with it
        # All at once (different signers), so that usually both meet the locked job; one can still land
        # after the provider's release has completed it, and is refused as completed (the tests take both).
        _log(job, list(await asyncio.gather(*(_answer(self.chain, who, type_, payload) for who, type_, payload in txs))),
             held)


if __name__ == "__main__":
    from services.compute.settings import ComputeSettings

    app.JobManager = DishonestConsumerManager
    app.build(ComputeSettings()).run()
