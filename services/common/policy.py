"""The default classification policy (ARCHITECTURE.md), as data: for each level and operation,
whose approval a grant needs, or that the operation is never allowed.

The chain enforces it when access is requested and when a job is submitted; the gateway
answers from the same table, so the two cannot disagree.
"""

from __future__ import annotations

PRIVACY_PRESERVING = ("psi", "psi_cardinality", "aggregation", "he_scoring", "supply_chain_verification")
FORBIDDEN = None

# level -> operation -> approvals needed (empty: none, granted on request); FORBIDDEN: never.
DEFAULT_POLICY: dict[str, dict[str, tuple[str, ...] | None]] = {
    "L1": {"raw_download": (), **{op: () for op in PRIVACY_PRESERVING}},
    "L2": {"raw_download": ("provider",), **{op: ("provider",) for op in PRIVACY_PRESERVING}},
    "L3": {"raw_download": FORBIDDEN, **{op: ("provider",) for op in PRIVACY_PRESERVING}},
    "L4": {"raw_download": FORBIDDEN, "psi": FORBIDDEN, "psi_cardinality": FORBIDDEN,
           "supply_chain_verification": FORBIDDEN,
           "aggregation": ("provider", "association"), "he_scoring": ("provider", "association")},
}


class Forbidden(ValueError):
    pass


def approvals_needed(level: str, operations: list[str], policy=DEFAULT_POLICY) -> tuple[str, ...]:
    """The union of approvals the operations need at ``level``; raises Forbidden for a never."""
    needed: set[str] = set()
    for op in operations:
        rule = policy[level].get(op, FORBIDDEN)
        if rule is FORBIDDEN:
            raise Forbidden(f"{op} is never allowed on {level} data")
        needed.update(rule)
    return tuple(sorted(needed))
