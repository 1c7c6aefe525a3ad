"""The gateway's read of chain state (members, accounts, assets, grants, the policy), cached for
a moment: the chain stays the authority, and decisions it re-checks cannot be fooled by a stale cache."""

from __future__ import annotations

import time
from typing import Any

from services.common.chain import ChainClient
from services.common.policy import Policy


class ChainView:
    def __init__(self, chain: ChainClient, ttl_s: float = 2.0):
        self.chain, self.ttl = chain, ttl_s
        self._cache: dict[str, tuple[float, Any]] = {}
        self._policy: Policy | None = None

    async def get(self, path: str, fresh: bool = False) -> Any | None:
        hit = self._cache.get(path)
        if hit and not fresh and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        value = await self.chain.query(path)
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
