"""The only code that reads or writes member and account state (prefixes ``members/``, ``accounts/``,
``revoked-keys/``, ``account-keys/``).

A member (an organisation) has one signing account with the member's own id, and optionally
a compute node account ``<member>.node``; the association also has its board seats' accounts
``<association>.board-<name>`` (kind ``board``). Accounts carry the public key and the next nonce.
A member's own key may add delegates, ``<member>.delegate-<label>`` (kind ``delegate``): keys that
sign only the member's txs of their ``powers``, until ``expires_at`` or until ended (``status``).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from services.common.tx import Code
from services.consensus.context import Context, Rejected

ROLES = ("association", "provider", "consumer", "compute_operator")
ASSOCIATION = "association"
DELEGATE = ".delegate-"  # a delegate's account id: <member>.delegate-<label>
MAX_DELEGATES = 16  # delegate accounts per member, ended ones included (a label can be delegated again)
MAX_DELEGATION_S = 90 * 86_400  # how far ahead of the block's time a delegate's expires_at may be


class MembersKeeper:
    def __init__(self, ctx: Context):
        self.store = ctx.store

    def member(self, member_id: str) -> dict[str, Any] | None:
        return self.store.get(f"members/{member_id}")

    def put_member(self, member: dict[str, Any]) -> None:
        self.store.set(f"members/{member['id']}", member)

    def account(self, account: str) -> dict[str, Any] | None:
        return self.store.get(f"accounts/{account}")

    def put_account(self, account: dict[str, Any]) -> None:
        self.store.set(f"accounts/{account['id']}", account)
        # Every key an account was ever given, to the first account that held it (never removed: a
        # revoked key stays taken), so that members.Delegate checks a key with one read.
        indexed = _key_index(account["public_key"])
        if not self.store.has(indexed):
            self.store.set(indexed, account["id"])

    def revoke_key(self, account: str, public_key: str, height: int, reason: str) -> None:
        """Keep the history of an account's revoked keys (``revoked-keys/<account>``)."""
        history = self.store.get(f"revoked-keys/{account}") or []
        self.store.set(f"revoked-keys/{account}", [*history, {"public_key": public_key, "height": height,
                                                                 "reason": reason}])

    def revoked_keys(self, account: str) -> list[dict[str, Any]]:
        return self.store.get(f"revoked-keys/{account}") or []

    def owner_of(self, account: str) -> dict[str, Any] | None:
        acc = self.account(account)
        return self.member(acc["member"]) if acc else None

    def is_association(self, account: str) -> bool:
        member = self.owner_of(account)
        return bool(member and ASSOCIATION in member["roles"] and member["status"] == "active")

    def active(self, member_id: str) -> bool:
        member = self.member(member_id)
        return bool(member and member["status"] == "active")

    def members(self) -> list[dict[str, Any]]:
        return [m for _, m in self.store.scan("members/")]

    def signing_member(self, account: str, role: str | None = None) -> dict[str, Any]:
        """The active member whose own (not node) account signed; with ``role``, it must hold it."""
        acc = self.account(account)
        member = self.member(acc["member"]) if acc else None
        if member is None or acc["kind"] != "member":
            raise Rejected(Code.UNAUTHORIZED, "this must be signed by a member's own account")
        if role is not None and role not in member["roles"]:
            raise Rejected(Code.UNAUTHORIZED, f"member {member['id']} does not have the {role} role")
        return member

    def delegates(self, member_id: str) -> list[dict[str, Any]]:
        """The member's delegate accounts, ended and expired ones included (member ids hold no dot,
        so this prefix is no other member's)."""
        return [a for _, a in self.store.scan(f"accounts/{member_id}{DELEGATE}")]

    def key_in_use(self, public_key: str) -> str | None:
        """The account that first held ``public_key`` (revoked keys included), if any."""
        return self.store.get(_key_index(public_key))

    @staticmethod
    def check_delegate(account: dict[str, Any], tx_type: str, time: int) -> None:
        """May this delegate account sign a ``tx_type`` now (block time ``time``)? Raises if not."""
        if account["status"] != "active":
            raise Rejected(Code.UNAUTHORIZED, f"delegate {account['id']} was undelegated at height {account['ended_height']}")
        if time >= account["expires_at"]:
            raise Rejected(Code.UNAUTHORIZED, f"delegate {account['id']} expired at {account['expires_at']}")
        if tx_type not in account["powers"]:
            raise Rejected(Code.UNAUTHORIZED, f"delegate {account['id']} may sign only {', '.join(account['powers'])}, "
                                              f"not {tx_type}")

    def signing_node(self, account: str) -> dict[str, Any]:
        """The active member whose compute node account signed."""
        acc = self.account(account)
        if acc is None or acc["kind"] != "node":
            raise Rejected(Code.UNAUTHORIZED, "this must be signed by a member's compute node")
        return self.member(acc["member"])


@lru_cache(maxsize=4096)  # a str of a str: every tx that writes an account hashes its key again
def _key_index(public_key: str) -> str:
    return "account-keys/" + hashlib.sha256(public_key.encode()).hexdigest()
