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


# How deep ( [ { may nest in a policy. cedarpy's parser overflows its stack and kills the process
# (SIGSEGV, nothing to catch) at a few hundred levels: 600 parsed and 1,500 crashed here, for
# parentheses, sets and records alike. A policy reaching the chain is parsed by every validator, so
# one such text would stop them all, and again on every replay of its block. No real policy nests
# past a handful; the bound is far from both.
MAX_NESTING = 64


def nesting(text: str) -> int:
    """The deepest nesting of ( [ { in a Cedar text, outside string literals and // comments."""
    depth = deepest = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # a string literal, to its closing quote (an escape skips the next character)
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth -= 1
        i += 1
    return deepest


@lru_cache(maxsize=8)
def _parsed(text: str) -> cedarpy.PolicySet:
    if nesting(text) > MAX_NESTING:
        raise PolicyError(f"the policy nests brackets deeper than {MAX_NESTING} levels")
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
            runs_left = _representative(grant.runs_left, self._runs_left_thresholds)
            if runs_left != grant.runs_left:
                grant = replace(grant, runs_left=runs_left)
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
    try:
        _parsed(text)  # remembered: a text Cedar must not see (MAX_NESTING) or cannot parse stops here
        est = json.loads(cedarpy.policies_to_json_str(text))
    except Exception:  # PolicyError, cedarpy's own errors, or JSON nested past Python's recursion limit
        return None
    found: set[int] = set()
    todo = [est]  # a loop, not recursion: a long chain of && nests the EST thousands of levels deep
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node == _CONTEXT:  # reached only when the context is used other than by an attribute
            return None
        if len(node) == 1:
            (op, arg), = node.items()
            if op in _COMPARISONS and isinstance(arg, dict) and set(arg) == {"left", "right"}:
                compared = [value for ours, other in ((arg["left"], arg["right"]), (arg["right"], arg["left"]))
                            if ours == _RUNS_LEFT and isinstance(other, dict) and len(other) == 1
                            and type(value := other.get("Value")) is int]
                if compared:
                    found.add(compared[0])
                    continue
            if op in (".", "has") and isinstance(arg, dict) and arg.get("left") in (_CONTEXT, _GRANT):
                # presence only, or another attribute; not the grant whole, nor runs_left uncompared
                if op == "has" or node not in (_GRANT, _RUNS_LEFT):
                    continue
                return None
        todo.extend(node.values())
    return tuple(sorted(found))


def _representative(runs_left: int, thresholds: tuple[int, ...]) -> int:
    """A value on the same side of (or equal to) each of ``thresholds`` as ``runs_left``: the
    nearest threshold's neighbour, so all values between two thresholds are decided as one."""
    for t in thresholds:
        if runs_left <= t:
            return t if runs_left == t else t - 1
    return thresholds[-1] + 1 if thresholds else 0


def _principal(caller: Caller) -> str:
    return f"{caller.member}/{caller.role}"


@lru_cache(maxsize=4096)
def _entities(caller: Caller, asset: AssetView) -> cedarpy.Entities:
    """The decision's two entities, parsed once: they stay the same from job to job (only the
    grant in the context changes, with every run), and Cedar's parsing of them was ~45 of a
    decision's ~130 us. A handle is immutable; Cedar reuses it as given."""
    return cedarpy.Entities.from_json_str(json.dumps([
        {"uid": {"type": "Caller", "id": _principal(caller)}, "parents": [],
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
        "principal": {"type": "Caller", "id": _principal(caller)},
        "action": {"type": "Action", "id": action},
        "resource": {"type": "Asset", "id": asset.id},
        "context": {"operation": operation, "as": as_, "grant": {
            "status": grant.status, "consumer": grant.consumer, "operations": list(grant.operations),
            "expired": grant.expired, "runs_left": grant.runs_left, "approvals": list(grant.approvals)}},
    }
    result = cedarpy.is_authorized(request, _parsed(text), _entities(caller, asset))
    return Decision(result.allowed, tuple(sorted(result.diagnostics.reasons)))
