"""The only code that reads or writes jobs (prefixes ``jobs/``, ``jobs-open-by/``, ``jobs-deadline/``).

Every way a job ends goes through ``finish``: the escrow is settled or refunded, the open-job
indexes are cleared, an event says why. Nothing else touches a job's money.
"""

from __future__ import annotations

from typing import Any

from services.consensus.bank.keeper import BankKeeper
from services.consensus.context import Context
from services.consensus.jobs.settlement import Settlement

LOCKED = "locked"
"""Every party attested and agreed, some provider holds back the key to its last protocol message:
the escrow may now only settle (every key released) or be refunded at the deadline."""


class JobsKeeper:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.store.get(f"jobs/{job_id}")

    def put(self, job: dict[str, Any]) -> None:
        self.store.set(f"jobs/{job['id']}", job)

    def open(self, job: dict[str, Any]) -> None:
        self.put(job)
        for party in self._parties(job):
            self.store.set(f"jobs-open-by/{party}/{job['id']}", 1)
        self.store.set(f"jobs-deadline/{job['deadline']:012d}/{job['id']}", 1)

    @staticmethod
    def _parties(job: dict[str, Any]) -> list[str]:
        """Members and assets whose suspension must stop the job."""
        return sorted({f"member:{p}" for p in job["participants"]} | {f"asset:{i['asset']}" for i in job["inputs"]})

    def open_jobs_of(self, party: str) -> list[dict[str, Any]]:
        return [self.get(key.rsplit("/", 1)[1]) for key, _ in self.store.scan(f"jobs-open-by/{party}/")]

    def finish(self, job: dict[str, Any], status: str, reason: str, outcome: Settlement | None = None) -> None:
        job["status"] = status
        job["ended_reason"] = reason
        job["ended_height"] = self.ctx.height
        self.put(job)
        for party in self._parties(job):
            self.store.delete(f"jobs-open-by/{party}/{job['id']}")
        self.store.delete(f"jobs-deadline/{job['deadline']:012d}/{job['id']}")
        event = {"completed": "JobCompleted", "failed": "JobFailed", "aborted": "JobAborted"}[status]
        self.ctx.emit(event, f"job:{job['id']}", job=job["id"], type=job["type"], consumer=job["consumer"],
                      reason=reason, result_hash=job.get("result_hash"))
        BankKeeper(self.ctx).settle(job["id"], outcome or Settlement(0, {}, {}, 0))

    def abort_touching(self, party: str, reason: str) -> None:
        """The kill switch: every open job of a suspended member or asset ends as aborted."""
        for job in self.open_jobs_of(party):
            self.finish(job, "aborted", reason)

    def fail_overdue(self, now: int) -> None:
        for key, _ in list(self.store.scan("jobs-deadline/")):
            _, at, job_id = key.split("/")
            if int(at) > now:
                break
            job = self.get(job_id)
            self.finish(job, "failed", "timed out" if job["status"] != LOCKED else
                        "timed out before every release key was on chain; the escrow is refunded")

    def all(self) -> list[dict[str, Any]]:
        return [j for _, j in self.store.scan("jobs/")]
