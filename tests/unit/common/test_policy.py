"""The authorization matrix: every role × level × operation × grant state, against the
classification table of ARCHITECTURE.md written out here independently of the Cedar text."""

from __future__ import annotations

import itertools
import json

import cedarpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import policy as policy_module
from services.common.policy import (MAX_NESTING, ROLES, AssetView, Caller, Forbidden, GrantView, Policy, PolicyError,
                                    nesting)

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
            fresh = cedarpy.is_authorized(request, policy_module._parsed(policy.text), json.dumps(entities))
            assert (got.allowed, got.policies) == (fresh.allowed, tuple(sorted(fresh.diagnostics.reasons))), \
                (suspended, status, level, roles, owner, action)
            seen += got.allowed
    assert 0 < seen < 2 * 2 * 4 * 2 * 2 * 4  # both answers occur: the attributes do decide


# -- runs_left decided by its order against the policy's constants ----------------------------------

RUNS = "context.grant.runs_left"


def test_the_default_policy_only_compares_runs_left_with_0_and_every_job_of_a_grant_is_one_decision(policy):
    assert policy_module.runs_left_thresholds(policy.text) == (0,)
    caller, view = Caller("bank", "analyst", ("consumer",)), asset("L2")
    policy_module._decide.cache_clear()
    for runs_left in range(1, 50):
        grant = GrantView("granted", "bank", OPERATIONS, False, runs_left, ("provider",))
        assert policy.decide(caller, "run", view, operation="psi", grant=grant).allowed
    assert policy_module._decide.cache_info().misses == 1  # one evaluation for 49 jobs
    spent = GrantView("granted", "bank", OPERATIONS, False, 0, ("provider",))
    assert not policy.decide(caller, "run", view, operation="psi", grant=spent).allowed


@pytest.mark.parametrize("condition", [
    f"{RUNS} + 1 > 2",                         # arithmetic
    f"{RUNS} > {RUNS}",                        # not a literal
    f'{RUNS} == "3"',                          # a literal that is not an integer
    'context.grant == {"runs_left": 3}',       # the grant whole
    "context == {}",                           # the context whole
    f"(if true then {RUNS} else 0) > 1",       # through an expression
    f"[{RUNS}].contains(2)",                   # in a set
])
def test_any_other_use_of_runs_left_is_decided_on_the_exact_value(condition):
    assert policy_module.runs_left_thresholds(f"permit (principal, action, resource) when {{ {condition} }};") is None


CLAUSE = st.builds(lambda op, c, flipped: f"{c} {op} {RUNS}" if flipped else f"{RUNS} {op} {c}",
                   st.sampled_from(("<", "<=", ">", ">=", "==", "!=")), st.integers(-3, 12), st.booleans())
CONDITION = st.recursive(CLAUSE, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(("&&", "||")), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    inner.map(lambda c: f"!({c})")), max_leaves=4)


@settings(max_examples=60, deadline=None)
@given(permit=CONDITION, forbid=CONDITION, kind=st.sampled_from(("when", "unless")))
def test_decisions_by_the_order_against_the_constants_equal_those_on_the_exact_value(permit, forbid, kind):
    """For policies that compare runs_left with constants in any way, the decision made (and
    remembered) on a representative equals Cedar's on the exact value, for every value around."""
    text = (f'permit (principal, action == Action::"run", resource) {kind} {{ {permit} }};\n'
            f'forbid (principal, action == Action::"run", resource) when {{ {forbid} && principal.member == "bank" }};')
    p = Policy(text)
    assert p._runs_left_thresholds is not None
    caller, view = Caller("bank", "analyst", ("consumer",)), asset("L2")
    for runs_left in range(-5, 16):
        grant = GrantView("granted", "bank", OPERATIONS, False, runs_left, ())
        exact = policy_module._decide.__wrapped__(text, caller, "run", view, "psi", grant, "")
        assert p.decide(caller, "run", view, operation="psi", grant=grant) == exact, (runs_left, text)


# -- a hostile policy text ------------------------------------------------------------------------------

NESTED = {"paren": lambda d: "(" * d + "true" + ")" * d,
          "set": lambda d: "[" * d + "1" + "]" * d + " == [1]",
          "record": lambda d: "{a: " * d + "1" + "}" * d + " == {a: 1}"}


@pytest.mark.parametrize("kind", NESTED)
def test_a_policy_nested_past_the_bound_is_refused_before_cedar_parses_it(kind):
    """cedarpy's parser overflows its stack at a few hundred levels (1,500 killed the process here
    with SIGSEGV): such a text must never reach it, on the chain or in the gateway."""
    def text(depth: int) -> str:  # `when { }` is a level itself
        return f"permit (principal, action, resource) when {{ {NESTED[kind](depth)} }};"

    Policy(text(MAX_NESTING - 1))
    for depth in (MAX_NESTING, 2000):
        with pytest.raises(PolicyError, match=f"deeper than {MAX_NESTING}"):
            Policy(text(depth))


def test_brackets_in_strings_and_comments_do_not_count():
    assert nesting('permit (principal, action, resource) when { ("((\\"[[{{" like "*") }; // ((((((') == 2
    assert nesting('permit (principal, action, resource) when { resource.level == "L(" };\n// ((\n'
                   'forbid (principal, action, resource);') == 1


@pytest.mark.parametrize("links", [1000, 3900])
def test_a_chain_of_thousands_of_conditions_is_decided_as_cedar_decides_and_nothing_recurses(links):
    """~31 KB at 3,900 links, under the chain's 32 KiB bound; its JSON form nests ~8,000 levels.
    (Cedar's evaluator itself stops at its recursion limit there, and denies.)"""
    text = f"permit (principal, action, resource) when {{ {RUNS} > 0" + " && true" * links + " };"
    p = Policy(text)
    caller, view = Caller("bank", "analyst", ("consumer",)), asset("L2")
    for runs_left in (0, 1, 7):
        grant = GrantView("granted", "bank", OPERATIONS, False, runs_left, ())
        exact = policy_module._decide.__wrapped__(text, caller, "run", view, "psi", grant, "")
        assert p.decide(caller, "run", view, operation="psi", grant=grant) == exact


@pytest.mark.parametrize("text", ['"unterminated (((', '"ends in an escape \\', "// a comment to the end ((((", ")))(("])
def test_the_nesting_count_takes_any_text(text):
    """Unterminated strings, a trailing escape, unbalanced brackets: counted, never an exception
    but the policy's own (a comment alone is an empty, valid policy)."""
    assert 0 <= nesting(text) <= 2
    try:
        Policy(text)
    except PolicyError:
        pass
