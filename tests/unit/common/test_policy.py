"""The authorization matrix: every role × level × operation × grant state, against the
classification table of ARCHITECTURE.md written out here independently of the Cedar text."""

from __future__ import annotations

import itertools

import pytest

from services.common.policy import ROLES, AssetView, Caller, Forbidden, GrantView, Policy

OPERATIONS = ("raw_download", "psi", "psi_cardinality", "aggregation", "he_scoring", "supply_chain_verification")
LEVELS = ("L1", "L2", "L3", "L4")
GRANTS = {
    "none": GrantView("none", "", (), True, 0),
    "pending": GrantView("pending", "bank", OPERATIONS, False, 3, ()),
    "granted_by_provider": GrantView("granted", "bank", OPERATIONS, False, 3, ("provider",)),
    "granted_by_both": GrantView("granted", "bank", OPERATIONS, False, 3, ("provider", "association")),
    "granted_no_approval": GrantView("granted", "bank", OPERATIONS, False, 3, ()),
    "expired": GrantView("granted", "bank", OPERATIONS, True, 3, ("provider", "association")),
    "runs_used_up": GrantView("granted", "bank", OPERATIONS, False, 0, ("provider", "association")),
    "revoked": GrantView("revoked", "bank", OPERATIONS, False, 3, ("provider", "association")),
    "someone_elses": GrantView("granted", "telco", OPERATIONS, False, 3, ("provider", "association")),
}


def allowed_at_level(level: str, op: str) -> bool:
    if level in ("L1", "L2"):
        return True
    if level == "L3":
        return op != "raw_download"
    return op in ("aggregation", "he_scoring")


def approvals_required(level: str) -> set[str]:
    return {"L1": set(), "L2": {"provider"}, "L3": {"provider"}, "L4": {"provider", "association"}}[level]


def expected_run(role: str, level: str, op: str, grant_name: str) -> bool:
    g = GRANTS[grant_name]
    live = g.status == "granted" and not g.expired and g.runs_left > 0 and g.consumer == "bank"
    return (role in ("member_admin", "analyst") and live and allowed_at_level(level, op)
            and approvals_required(level) <= set(g.approvals))


@pytest.fixture(scope="module")
def policy():
    return Policy()


def asset(level: str) -> AssetView:
    return AssetView("telco.data", level, "telco", OPERATIONS)


@pytest.mark.parametrize("role,level", list(itertools.product(ROLES, LEVELS)))
def test_run_matrix(policy, role, level):
    caller = Caller("bank", role, ("consumer", "provider"))
    for op, grant_name in itertools.product(OPERATIONS, GRANTS):
        got = policy.decide(caller, "run", asset(level), operation=op, grant=GRANTS[grant_name]).allowed
        assert got == expected_run(role, level, op, grant_name), (role, level, op, grant_name)


@pytest.mark.parametrize("role,level", list(itertools.product(ROLES, LEVELS)))
def test_request_matrix_and_approvals_needed(policy, role, level):
    caller = Caller("bank", role, ("consumer",))
    for op in OPERATIONS:
        got = policy.decide(caller, "request_access", asset(level), operation=op).allowed
        assert got == (role in ("member_admin", "analyst") and allowed_at_level(level, op)), (role, level, op)
        if allowed_at_level(level, op):
            assert set(policy.approvals_needed(caller, asset(level), [op])) == approvals_required(level)
        else:
            with pytest.raises(Forbidden):
                policy.approvals_needed(caller, asset(level), [op])


@pytest.mark.parametrize("role", ROLES)
def test_only_the_right_admin_decides_on_access(policy, role):
    as_provider = policy.decide(Caller("telco", role), "approve_access", asset("L3"), as_="provider").allowed
    as_foreign_provider = policy.decide(Caller("bank", role), "approve_access", asset("L3"), as_="provider").allowed
    as_association = policy.decide(Caller("association", role), "approve_access", asset("L4"), as_="association").allowed
    assert as_provider == (role == "member_admin")
    assert not as_foreign_provider
    assert as_association == (role == "association_admin")


def test_suspended_caller_is_refused_everything(policy):
    caller = Caller("bank", "member_admin", ("consumer",), suspended=True)
    for action in ("search", "view", "request_access", "run", "approve_access", "suspend"):
        decision = policy.decide(caller, action, asset("L1"), operation="psi", grant=GRANTS["granted_by_both"],
                                 as_="provider")
        assert not decision.allowed, action


def test_consumer_role_is_needed_to_request(policy):
    provider_only = Caller("telco2", "member_admin", ("provider",))
    assert not policy.decide(provider_only, "request_access", asset("L1"), operation="psi").allowed


def test_decisions_with_the_parsed_entities_equal_cedars_own_parse_of_them(policy):
    """The two entities are parsed once per (caller, asset) and reused: every attribute of both
    must reach the decision as if parsed afresh, whatever was decided before."""
    import json

    import cedarpy

    from services.common import policy as module

    grant = GRANTS["granted_by_both"]
    seen = 0
    for suspended, status, level, roles, owner in itertools.product(
            (False, True), ("listed", "delisted"), LEVELS, (("consumer",), ()), ("telco", "bank")):
        caller = Caller("bank", "member_admin", roles, suspended)
        view = AssetView("telco.data", level, owner, OPERATIONS, status)
        for action in ("run", "view", "request_access", "list_asset"):
            got = policy.decide(caller, action, view, operation="psi", grant=grant)
            entities = [
                {"uid": {"type": "Caller", "id": "bank/member_admin"}, "parents": [],
                 "attrs": {"member": "bank", "role": "member_admin", "member_roles": list(roles), "suspended": suspended}},
                {"uid": {"type": "Asset", "id": "telco.data"}, "parents": [],
                 "attrs": {"level": level, "owner": owner, "operations": list(OPERATIONS), "status": status}}]
            request = {"principal": {"type": "Caller", "id": "bank/member_admin"}, "action": {"type": "Action", "id": action},
                       "resource": {"type": "Asset", "id": "telco.data"},
                       "context": {"operation": "psi", "as": "", "grant": {
                           "status": grant.status, "consumer": grant.consumer, "operations": list(grant.operations),
                           "expired": grant.expired, "runs_left": grant.runs_left, "approvals": list(grant.approvals)}}}
            fresh = cedarpy.is_authorized(request, module._parsed(policy.text), json.dumps(entities))
            assert (got.allowed, got.policies) == (fresh.allowed, tuple(sorted(fresh.diagnostics.reasons))), \
                (suspended, status, level, roles, owner, action)
            seen += got.allowed
    assert 0 < seen < 2 * 2 * 4 * 2 * 2 * 4  # both answers occur: the attributes do decide
