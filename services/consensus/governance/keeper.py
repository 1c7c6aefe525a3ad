"""The only code that reads or writes the policy document (key ``policy/current``)."""

from __future__ import annotations

from services.common.policy import DEFAULT_POLICY_TEXT, Policy, digest
from services.consensus.context import Context


class GovernanceKeeper:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def policy(self) -> Policy:
        doc = self.store.get("policy/current")
        return Policy(doc["text"], doc["version"]) if doc else Policy(DEFAULT_POLICY_TEXT, 1)

    def publish(self, version: int, text: str) -> None:
        self.store.set("policy/current", {"version": version, "text": text, "sha256": digest(text),
                                          "height": self.ctx.height})
        self.ctx.emit("PolicyPublished", "policy", version=version, sha256=digest(text))
