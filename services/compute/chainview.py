"""What the compute node reads from the chain: node keys, member status, job records.

The chain is the only authority on who a peer is; nothing a peer says about itself counts
until its node key, as registered on chain, has checked its signature.

With a trust anchor in the environment (RDX_TRUSTED_GENESIS or RDX_TRUSTED_HEADER,
services/common/verified.py) every read is proven against the validators' signed headers: an
answer that does not verify raises ``ChainUnverified``, a ``ChainUnavailable``, so a peer is not
admitted and a job not run on a node's word. Without one, reads take the node's word (logged).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Sequence
from typing import Any

from services.common import lightclient, verified
from services.common.chain import ChainClient, ChainError
from services.compute.jobtypes.base import InputRef, JobSpec, NodeRef, PeerRefused


log = logging.getLogger("rdx.compute.chainview")


class ChainUnavailable(Exception):
    """The chain could not be asked right now; try again."""


class ChainUnverified(ChainUnavailable):
    """The node's answer is not proven by the validators' signatures: nothing is decided on it."""


class ChainView:
    def __init__(self, client: ChainClient, reader: verified.VerifiedChain | None = None):
        self.client = client
        self.reader = reader or verified.from_env(client)
        if self.reader is None:
            log.warning("no trust anchor (RDX_TRUSTED_GENESIS or RDX_TRUSTED_HEADER): chain reads are not verified")

    async def _query(self, path: str) -> Any:
        try:
            return await (self.reader or self.client).query(path)
        except ChainError as exc:
            raise ChainUnavailable(str(exc)) from None
        except verified.VerificationError as exc:
            log.warning("a chain answer did not verify: %s", exc)
            raise ChainUnverified(f"the chain node's answer for {path} did not verify") from None

    async def _many(self, paths: list[str]) -> list[Any]:
        """Several reads at once: a verified read waits for the block after its answer, so reads
        made together mostly share that wait (one after another, each would wait a block)."""
        found = await asyncio.gather(*(self._query(p) for p in paths), return_exceptions=True)
        for item in found:
            if isinstance(item, BaseException):
                raise item
        return found

    async def node_key(self, member: str, account: str) -> str:
        """The public key of ``member``'s compute node ``account``, if both are in good standing."""
        if account != f"{member}.node":
            raise PeerRefused(f"{account} is not the node account of {member}")
        acc, m = await self._many([f"/accounts/{account}", f"/members/{member}"])
        if acc is None or acc.get("kind") != "node" or acc.get("member") != member:
            raise PeerRefused(f"{account} is not a compute node registered on chain")
        if m is None or m.get("status") != "active":
            raise PeerRefused(f"member {member} is not active on chain")
        if (m.get("node") or {}).get("account") != account:
            raise PeerRefused(f"{account} is not {member}'s current compute node")
        return acc["public_key"]

    async def account(self, account: str) -> dict[str, Any] | None:
        return await self._query(f"/accounts/{account}")

    async def job(self, job: str) -> dict[str, Any] | None:
        return await self._query(f"/jobs/{job}")

    async def open_jobs(self, member: str, limit: int = 1000) -> list[str]:
        """Ids of the jobs open on chain (running or locked) that ``member`` takes part in, at most
        ``limit``. The node's word: a listing has no proof, so a node can hide a job here (or name
        one that is not), and each job must then be read, proven, with ``job``."""
        prefix = f"jobs-open-by/member:{member}/"
        try:
            listed = await self.client.query_prefix(f"/{prefix}", page_size=min(limit, 500), max_items=limit)
        except (ChainError, KeyError, TypeError, ValueError) as exc:
            raise ChainUnavailable(f"the open jobs of {member} cannot be listed ({type(exc).__name__})") from None
        return sorted(k[len(prefix):] for k in listed if isinstance(k, str) and k.startswith(prefix))[:limit]

    async def grant(self, grant: str) -> dict[str, Any] | None:
        """An access grant as the chain holds it now (status, runs used, operations, expiry)."""
        return await self._query(f"/access/{grant}")

    async def listing(self, asset: str, version: int) -> dict[str, Any] | None:
        """The listing of ``asset`` as it was at ``version`` (metadata, operations, minimum group size)."""
        return await self._query(f"/asset-versions/{asset}/{int(version):08d}")

    async def committed_at(self, height: int) -> float | None:
        """When block ``height`` was committed, epoch seconds: the median of its precommits' times
        (what CometBFT puts in the next header as its BFT time). For the latency metrics only: taken
        from the node's word, unproven; None if it cannot be read."""
        try:
            commit = await self.client.rpc("commit", height=str(int(height)))
            times = [lightclient.epoch_seconds(s["timestamp"]) for s in commit["signed_header"]["commit"]["signatures"]
                     if s.get("block_id_flag") == 2]  # BlockIDFlagCommit: a vote for this block
        except (ChainError, KeyError, TypeError, ValueError):
            return None
        return statistics.median(times) if times else None

    async def spec(self, job: str, participants: Sequence[str] = ()) -> tuple[JobSpec, dict[str, Any]] | None:
        """The job as the chain recorded it, with every participant's current node; None if unknown.

        ``participants``, as its proven JobAuthorized named them, are read together with the job: one
        round trip instead of two on a job's start path (issue 23). The record decides: if it names
        others, theirs are read after it."""
        found = await self._many([f"/jobs/{job}", *(f"/members/{member}" for member in participants)])
        record, members = found[0], found[1:]
        if record is None:
            return None
        if list(participants) != list(record["participants"]):
            members = await self._many([f"/members/{member}" for member in record["participants"]])
        nodes: dict[str, NodeRef] = {}
        for member, m in zip(record["participants"], members):
            if m and m.get("node"):
                nodes[member] = NodeRef(m["node"]["account"], m["node"]["endpoint"])
        spec = JobSpec(
            job=record["id"], type=record["type"], consumer=record["consumer"],
            inputs=tuple(InputRef(i["asset"], i["provider"], i["version"], i["commitment"], i.get("min_group_size", 1),
                                  i.get("grant") or "") for i in record["inputs"]),
            participants=tuple(record["participants"]), nodes=nodes, params=record.get("params") or {},
            max_price=record["max_price"], deadline=record["deadline"])
        return spec, record

