"""The only code that reads or writes governance state (prefix ``governance/``, and the policy
documents ``policy/current`` and ``policy/versions/``): the policy, the association's board and its
proposals, and app upgrades."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from services.common.policy import DEFAULT_POLICY_TEXT, Policy, digest
from services.consensus.context import Context
from services.consensus.governance.powers import DEFAULT_POWERS
from services.consensus.members.keeper import ASSOCIATION, MembersKeeper

BOARD = "governance/board"
PROPOSALS = "governance/proposals/"
OPEN = "governance/open/"  # <expires_at, 12 digits>/<id>: the open proposals, by expiry
UPGRADE = "governance/upgrade"
APP_VERSION = "governance/app-version"
DEFAULT_TTL_S = 7 * 86_400
POLICY = "policy/current"
VERSIONS = "policy/versions/"  # <version, 12 digits>: the versions published since versions were kept


@lru_cache(maxsize=8)
def _policy(text: str, version: int) -> Policy:
    """A policy as published (its text's digest computed once, not at every jobs.Submit): a Policy
    is a pure function of its text and version, and nothing changes one after it is made."""
    return Policy(text, version)


class GovernanceKeeper:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    # -- the policy --------------------------------------------------------------------------------
    def policy(self) -> Policy:
        doc = self.store.get("policy/current")
        return _policy(doc["text"], doc["version"]) if doc else _policy(DEFAULT_POLICY_TEXT, 1)

    def publish(self, version: int, text: str) -> None:
        self.store.set(POLICY, {"version": version, "text": text, "sha256": digest(text), "height": self.ctx.height})
        self.ctx.emit("PolicyPublished", "policy", version=version, sha256=digest(text))

    def keep_current(self) -> None:
        """Keep the version in force under ``policy/versions/`` too, unless it is kept already. The
        publish handler calls it before and after publishing: a new version is kept, and so is the one
        it replaces (the genesis's, or one published before versions were kept), so the first
        publication writes two keys and each later one a single new key. Nothing else writes there,
        and a chain that never publishes (its genesis included) has no such key."""
        doc = self.store.get(POLICY)
        if doc is not None and self.store.get(f"{VERSIONS}{doc['version']:012d}") is None:
            self.store.set(f"{VERSIONS}{doc['version']:012d}", doc)

    # -- the board ---------------------------------------------------------------------------------
    def board(self) -> dict[str, Any]:
        """The board. A chain whose genesis named none (made before boards existed) has a board of
        one: the association's own key, threshold 1, so its association acts as it always did."""
        doc = self.store.get(BOARD)
        if doc is not None:
            return doc
        association = next((m["id"] for m in MembersKeeper(self.ctx).members() if ASSOCIATION in m["roles"]), "")
        return {"association": association, "seats": [association], "threshold": 1,
                "powers": dict(DEFAULT_POWERS), "proposal_ttl_s": DEFAULT_TTL_S, "height": 0}

    def put_board(self, board: dict[str, Any]) -> None:
        self.store.set(BOARD, board)

    # -- proposals ---------------------------------------------------------------------------------
    def proposal(self, proposal_id: str) -> dict[str, Any] | None:
        return self.store.get(f"{PROPOSALS}{proposal_id}")

    def open_count(self) -> int:
        return sum(1 for _ in self.store.scan(OPEN))

    def create(self, proposal: dict[str, Any]) -> None:
        self.store.set(f"{PROPOSALS}{proposal['id']}", proposal)
        self.store.set(f"{OPEN}{proposal['expires_at']:012d}/{proposal['id']}", 1)

    def put_proposal(self, proposal: dict[str, Any]) -> None:
        self.store.set(f"{PROPOSALS}{proposal['id']}", proposal)

    def close(self, proposal: dict[str, Any], status: str, **detail: Any) -> None:
        """A proposal leaves the open set: executed, failed or expired."""
        proposal.update(status=status, closed_height=self.ctx.height, **detail)
        self.put_proposal(proposal)
        self.store.delete(f"{OPEN}{proposal['expires_at']:012d}/{proposal['id']}")

    def due(self, now: int) -> list[dict[str, Any]]:
        """Open proposals whose expiry is at or before ``now``."""
        found = []
        for key, _ in self.store.scan(OPEN):
            _, _, at, proposal_id = key.split("/")
            if int(at) > now:
                break
            found.append(self.proposal(proposal_id))
        return found

    # -- upgrades ----------------------------------------------------------------------------------
    def upgrade(self) -> dict[str, Any] | None:
        return self.store.get(UPGRADE)

    def schedule(self, plan: dict[str, Any]) -> None:
        self.store.set(UPGRADE, plan)

    def cancel(self) -> None:
        self.store.delete(UPGRADE)

    def app_version(self) -> int:
        """The app version blocks are applied with: 1 until the first upgrade."""
        return self.store.get(APP_VERSION) or 1

    def apply_upgrade(self, plan: dict[str, Any]) -> None:
        self.store.set(APP_VERSION, plan["app_version"])
        self.store.delete(UPGRADE)
        self.ctx.emit("UpgradeApplied", "governance:upgrade", name=plan["name"], app_version=plan["app_version"],
                      height=self.ctx.height)
