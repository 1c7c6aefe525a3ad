"""The node's HTTP API (besides /healthz, /readyz, /metrics from the chassis).

It shows what the node is, which datasets it holds (ids, columns, row counts, commitments —
never rows), how its jobs stand, and hands the member its own sealed result of a job (the
consumer's result; in supply_chain any party's own outcome) once the chain has completed (and
so settled) the job. Listening on loopback by default: it is the member's own systems that call
it; a node holds no other member's result, and what it holds is sealed to its own node key.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Query

from services.compute.datasets import DatasetError, Datasets
from services.compute.jobtypes import JOB_TYPES
from services.compute.journal import Journal


def router(*, member: str, node_account: str, public_key: str, peer_endpoint: str, runner: str, workers: int,
           datasets: Datasets, journal: Journal, registered: Callable[[], bool]) -> APIRouter:
    api = APIRouter()

    @api.get("/node")
    async def node() -> dict:
        return {"member": member, "node_account": node_account, "public_key": public_key,
                "registered_on_chain": registered(), "peer_endpoint": peer_endpoint, "runner": runner,
                "workers": workers, "job_types": sorted(JOB_TYPES)}

    @api.get("/datasets")
    async def list_datasets() -> list[dict]:
        out = []
        for d in datasets.all():
            summary = d.cached_summary()
            try:  # off the event loop: a header or Parquet footer is the operator's file, of any size
                columns = await asyncio.to_thread(d.columns)
                error = None
            except DatasetError as exc:
                columns, error = [], str(exc)
            out.append({"id": d.id, "asset": d.asset, "format": d.config.format, "key": d.config.key,
                        "columns": columns, "rows": summary[1] if summary else None,
                        "commitment": summary[0] if summary else None, "error": error})
        return out

    @api.get("/jobs")
    async def list_jobs(status: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> list[dict]:
        return [row.public() for row in journal.recent(limit, status)]

    @api.get("/jobs/{job}")
    async def get_job(job: str) -> dict:
        row = journal.get(job)
        if row is None:
            raise HTTPException(404, f"no job {job} on this node")
        return row.public()

    @api.get("/jobs/{job}/result")
    async def get_result(job: str) -> dict:
        row = journal.get(job)
        if row is None:
            raise HTTPException(404, f"no job {job} on this node")
        if row.status != "completed":
            raise HTTPException(409, f"job {job} is {row.status}; a result is released once the chain completes it")
        envelope = journal.result(job)
        if envelope is None:
            raise HTTPException(404, f"job {job} gives {member} no result")
        return {"job": job, "type": row.type, "result_hash": row.result_hash, "sealed_to": node_account,
                "scheme": "libsodium sealed box to the X25519 form of the node's Ed25519 key",
                "envelope": base64.b64encode(envelope).decode()}

    return api
