"""The classification policy, in Cedar (cedarpy), evaluated in-process by the chain and the gateway.

The text lives on chain (published at genesis from ``policies/default.cedar``, replaced by the
association with ``governance.PublishPolicy``), so every validator and every gateway evaluate
the same version. Cedar rather than Rego: both run in-process here, but Cedar's
permit/forbid-with-default-deny model states a classification table directly, its
evaluation is deterministic and side-effect free by construction (what a state machine needs),
and a decision costs ~0.1 ms (bench/gateway.py measures both).

Which approvals a grant needs is not written twice: it is the smallest set of approvals with
which the policy would permit the use (``approvals_needed``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import cedarpy

DEFAULT_POLICY_TEXT = (Path(__file__).parent / "policies" / "default.cedar").read_text()
ROLES = ("association_admin", "member_admin", "analyst", "compute_operator", "auditor")
APPROVERS = ("provider", "association")
_APPROVAL_SETS = ((), ("provider",), ("association",), ("provider", "association"))


class Forbidden(ValueError):
    """The policy never allows this use at this level, whatever the approvals."""


class PolicyError(ValueError):
    """The policy text does not parse."""


@dataclass(frozen=True)
class Caller:
    member: str
    role: str
    member_roles: tuple[str, ...] = ()
    suspended: bool = False


@dataclass(frozen=True)
class AssetView:
    id: str
    level: str
    owner: str
    operations: tuple[str, ...]
    status: str = "listed"

    @classmethod
    def of(cls, asset: dict) -> "AssetView":
        return cls(asset["id"], asset["level"], asset["owner"], tuple(asset["operations"]), asset["status"])


@dataclass(frozen=True)
class GrantView:
    status: str
    consumer: str
    operations: tuple[str, ...]
    expired: bool
    runs_left: int
    approvals: tuple[str, ...] = field(default=())

    @classmethod
    def of(cls, grant: dict, now: int) -> "GrantView":
        return cls(grant["status"], grant["consumer"], tuple(grant["operations"]), now >= grant["expires_at"],
                   grant["max_runs"] - grant["runs_used"], tuple(grant["approvals"]))


NO_GRANT = GrantView("none", "", (), True, 0)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policies: tuple[str, ...]  # the policies that decided (permits if allowed, forbids if denied)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=8)
def _parsed(text: str) -> cedarpy.PolicySet:
    try:
        return cedarpy.PolicySet.from_str(text)
    except Exception as exc:  # cedarpy raises its own error types for parse failures
        raise PolicyError(f"the policy does not parse: {exc}") from None


class Policy:
    def __init__(self, text: str = DEFAULT_POLICY_TEXT, version: int = 1):
        self.text, self.version, self.sha256 = text, version, digest(text)
        _parsed(text)  # a policy that does not parse fails here, not at its first decision
        self._runs_left_thresholds = runs_left_thresholds(text)

    def decide(self, caller: Caller, action: str, asset: AssetView, *, operation: str = "",
               grant: GrantView = NO_GRANT, as_: str = "") -> Decision:
        # Every job of a grant changes its runs_left; where the policy only compares it with
        # constants, a value on the same side of each gives the same decision, and is remembered.
        if self._runs_left_thresholds is not None:
            grant = replace(grant, runs_left=_representative(grant.runs_left, self._runs_left_thresholds))
        return _decide(self.text, caller, action, asset, operation, grant, as_)

    def approvals_needed(self, caller: Caller, asset: AssetView, operations: list[str]) -> tuple[str, ...]:
        """The approvals a grant for ``operations`` needs; raises Forbidden if none would do.

        Asked of the consumer member acting through its admin: what a grant needs depends on
        the data, not on which of the consumer's people asks.
        """
        user = Caller(caller.member, "member_admin", caller.member_roles, caller.suspended)
        needed: set[str] = set()
        for op in operations:
            for approvals in _APPROVAL_SETS:
                hypothetical = GrantView("granted", caller.member, (op,), False, 1, approvals)
                if self.decide(user, "run", asset, operation=op, grant=hypothetical).allowed:
                    needed.update(approvals)
                    break
            else:
                raise Forbidden(f"{op} is never allowed on {asset.level} data")
        return tuple(a for a in APPROVERS if a in needed)


_CONTEXT = {"Var": "context"}
_GRANT = {".": {"left": _CONTEXT, "attr": "grant"}}
_RUNS_LEFT = {".": {"left": _GRANT, "attr": "runs_left"}}
_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


def runs_left_thresholds(text: str) -> tuple[int, ...] | None:
    """The integers the policy compares ``context.grant.runs_left`` with, sorted, when comparing it
    with integer literals is all the policy does with it (or with the grant or the context as a
    whole); then a decision depends on runs_left only through its order against each of them.
    None for any other use (arithmetic, a comparison with anything but an integer literal, the
    grant passed whole, ...): such a policy is decided on the exact value. Read from Cedar's own
    JSON form of the policy (its EST), so the text's spelling does not matter."""
    found: set[int] = set()

    def only_compared(node: Any) -> bool:
        if isinstance(node, list):
            return all(only_compared(n) for n in node)
        if not isinstance(node, dict):
            return True
        if node == _CONTEXT:  # reached only when the context is used other than by an attribute
            return False
        if len(node) == 1:
            (op, arg), = node.items()
            if op in _COMPARISONS and isinstance(arg, dict) and set(arg) == {"left", "right"}:
                for ours, other in ((arg["left"], arg["right"]), (arg["right"], arg["left"])):
                    value = other.get("Value") if isinstance(other, dict) and len(other) == 1 else None
                    if ours == _RUNS_LEFT and type(value) is int:
                        found.add(value)
                        return True
            if op in (".", "has") and isinstance(arg, dict) and arg.get("left") in (_CONTEXT, _GRANT):
                # presence only, or another attribute; not the grant whole, nor runs_left uncompared
                return op == "has" or node not in (_GRANT, _RUNS_LEFT)
        return all(only_compared(v) for v in node.values())

    try:
        est = json.loads(cedarpy.policies_to_json_str(text))
    except Exception:  # cedarpy raises its own error types; Policy() reports a bad text itself
        return None
    return tuple(sorted(found)) if only_compared(est) else None


def _representative(runs_left: int, thresholds: tuple[int, ...]) -> int:
    """A value on the same side of (or equal to) each of ``thresholds`` as ``runs_left``: the
    nearest threshold's neighbour, so all values between two thresholds are decided as one."""
    for t in thresholds:
        if runs_left <= t:
            return t if runs_left == t else t - 1
    return thresholds[-1] + 1 if thresholds else 0


@lru_cache(maxsize=4096)
def _entities(caller: Caller, asset: AssetView) -> cedarpy.Entities:
    """The decision's two entities, parsed once: they stay the same from job to job (only the
    grant in the context changes, with every run), and Cedar's parsing of them was ~45 of a
    decision's ~130 us. A handle is immutable; Cedar reuses it as given."""
    return cedarpy.Entities.from_json_str(json.dumps([
        {"uid": {"type": "Caller", "id": f"{caller.member}/{caller.role}"}, "parents": [],
         "attrs": {"member": caller.member, "role": caller.role, "member_roles": list(caller.member_roles),
                   "suspended": caller.suspended}},
        {"uid": {"type": "Asset", "id": asset.id}, "parents": [],
         "attrs": {"level": asset.level, "owner": asset.owner, "operations": list(asset.operations),
                   "status": asset.status}},
    ]))


@lru_cache(maxsize=4096)
def _decide(text: str, caller: Caller, action: str, asset: AssetView, operation: str, grant: GrantView,
            as_: str) -> Decision:
    """One Cedar evaluation (~0.1 ms, most of a jobs.Submit's cost), remembered: a decision is a
    pure function of the policy text and these frozen views, and the chain asks the same question
    twice per tx (CheckTx, then FinalizeBlock), the gateway once per request of a kind."""
    request = {
        "principal": {"type": "Caller", "id": f"{caller.member}/{caller.role}"},
        "action": {"type": "Action", "id": action},
        "resource": {"type": "Asset", "id": asset.id},
        "context": {"operation": operation, "as": as_, "grant": {
            "status": grant.status, "consumer": grant.consumer, "operations": list(grant.operations),
            "expired": grant.expired, "runs_left": grant.runs_left, "approvals": list(grant.approvals)}},
    }
    result = cedarpy.is_authorized(request, _parsed(text), _entities(caller, asset))
    return Decision(result.allowed, tuple(sorted(result.diagnostics.reasons)))
