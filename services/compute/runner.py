"""Runners: where a job type's code and its heavy arithmetic run.

The lifecycle hands a runner a job type and its context; the runner runs the protocol and
offers ``compute`` for CPU-bound batches. The local runner runs the protocol in the node's
event loop and the arithmetic on a pool of worker processes on this machine (both cores by
default). The Kubernetes runner (k8s_runner.py) keeps the protocol in the node too and sends a
job's batches to a Kubernetes Job pod sized for them; the lifecycle does not change.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from services.compute import psi_kernel
from services.compute.jobtypes.base import JobContext, JobType, Outcome

log = logging.getLogger("rdx.compute.runner")


class Runner(ABC):
    name: str
    workers: int

    async def start(self) -> None:
        """Acquire what running jobs needs (processes, clients); called once at node start."""

    async def stop(self) -> None:
        """Release it; running jobs have been cancelled before."""

    @abstractmethod
    async def run(self, job_type: JobType, ctx: JobContext) -> Outcome:
        """Run this node's part of the job; cancelling the awaiting task stops it."""

    @abstractmethod
    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (picklable, top-level) where CPU-heavy work belongs."""


class LocalRunner(Runner):
    """The protocol in this process, the arithmetic on ``workers`` processes (spawned, not forked:
    the node's gRPC and asyncio threads must not be copied into a child)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    async def start(self) -> None:
        self._pool = self._new_pool()
        loop = asyncio.get_running_loop()
        # Start every worker now, so the first job does not pay for interpreter start-up.
        await asyncio.gather(*(loop.run_in_executor(self._pool, psi_kernel.warm_up) for _ in range(self.workers)))
        log.info("local runner ready with %d worker processes", self.workers)

    async def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def run(self, job_type: JobType, ctx: JobContext) -> Outcome:
        return await job_type.run(ctx)

    async def compute(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = self._new_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): the next call gets a fresh pool.
            log.error("a worker process died; the pool is restarted")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise RuntimeError("a worker process died") from None


def make_runner(kind: str, workers: int, settings=None) -> Runner:
    """``settings`` (ComputeSettings) configures the kubernetes runner."""
    if kind == "local":
        return LocalRunner(workers)
    if kind == "kubernetes" and settings is not None:
        from services.compute import k8s_runner  # the kubernetes client only where it is used

        return k8s_runner.build(settings, workers)
    raise ValueError(f"unknown runner {kind!r} (this node has: local, kubernetes)")
