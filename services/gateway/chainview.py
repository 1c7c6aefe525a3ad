"""The gateway's read of chain state (members, accounts, assets, grants, the policy), cached for
a moment: the chain stays the authority, and decisions it re-checks cannot be fooled by a stale cache.

With a trust anchor in the environment (RDX_TRUSTED_GENESIS or RDX_TRUSTED_HEADER,
services/common/verified.py) every read is proven against the validators' signed headers, so a
lying node cannot make the gateway take its key for a member's: an answer that does not verify is
refused with 502 and nothing is cached. Without one, reads take the node's word (logged at start)."""

from __future__ import annotations

import logging
import time
from typing import Any

from services.common import verified
from services.common.chain import ChainClient
from services.common.policy import Policy
from services.gateway.problems import Problem

log = logging.getLogger("rdx.gateway.chainview")


class ChainView:
    def __init__(self, chain: ChainClient, ttl_s: float = 2.0, reader: verified.VerifiedChain | None = None):
        self.chain, self.ttl = chain, ttl_s
        self.reader = reader or verified.from_env(chain)
        if self.reader is None:
            log.warning("no trust anchor (RDX_TRUSTED_GENESIS or RDX_TRUSTED_HEADER): chain reads are not verified")
        self._cache: dict[str, tuple[float, Any]] = {}
        self._policy: Policy | None = None

    async def get(self, path: str, fresh: bool = False) -> Any | None:
        """One state key's value, or None. A path that names no single key (an id from a request
        ending in ``/`` or holding ``?`` would make it a listing) is None: there is no such key."""
        if path.endswith("/") or "?" in path or "#" in path:
            return None
        hit = self._cache.get(path)
        if hit and not fresh and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        try:
            value = await (self.reader or self.chain).query(path)
        except verified.VerificationError as exc:
            log.warning("a chain answer did not verify: %s", exc)
            raise Problem(502, "Unverified chain answer",
                          "the chain node's answer is not proven by the validators' signatures; refused") from None
        self._cache[path] = (time.monotonic(), value)
        return value

    async def member(self, member_id: str) -> dict | None:
        return await self.get(f"/members/{member_id}")

    async def account(self, account: str) -> dict | None:
        return await self.get(f"/accounts/{account}")

    async def policy(self) -> Policy:
        """The policy version on chain now; re-parsed only when its digest changes."""
        doc = await self.get("/policy/current")
        if doc and (self._policy is None or self._policy.sha256 != doc["sha256"]):
            self._policy = Policy(doc["text"], doc["version"])
        return self._policy or Policy()
