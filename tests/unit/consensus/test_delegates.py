"""A member's delegated keys (members.Delegate / members.Undelegate) through FinalizeBlock/Commit,
invariants checked after every block: what a delegate may sign, as whom, and every refusal."""

from __future__ import annotations

import base64
from typing import get_args

import pytest
from test_domains import World

from services.common.identity import Identity
from services.common.tx import Code
from services.consensus.governance.powers import ASSOCIATION_ONLY, BY_TYPE
from services.consensus.members.keeper import MAX_DELEGATES, MAX_DELEGATION_S
from services.consensus.members.messages import Power

DAY = 86_400


class Delegates(World):
    def send(self, who: Identity, type_: str, payload: dict) -> tuple[int, str]:
        """As World.send, then the signer's nonce as the chain has it: a tx refused before its
        handler (a delegate's, outside its powers) spends none."""
        result = super().send(who, type_, payload)
        account = self.state(f"accounts/{who.account}")
        self.chain.nonces[who.account] = account["nonce"] if account else 0
        return result

    def now(self) -> int:
        """The time of the next block (chainsim: t0 + 10 s per height)."""
        return self.chain.t0 + (self.chain.height + 1) * 10

    def delegate(self, label="analyst", powers=("jobs.Submit", "access.Request"), expires_in=30 * DAY,
                 key: Identity | None = None, by: Identity | None = None) -> tuple[Identity, tuple[int, str]]:
        member = by or self.bank
        key = key or Identity.generate(f"{member.account}.delegate-{label}")
        result = self.send(member, "members.Delegate", {"label": label, "public_key": key.public_key,
                                                        "powers": list(powers), "expires_at": self.now() + expires_in})
        return key, result

    def events(self, type_: str) -> list[dict]:
        return [e.data for e in self.chain.db.events_after((self.chain.height, -2, -1)) if e.type == type_]


@pytest.fixture
def w(tmp_path):
    return Delegates(tmp_path)


def test_a_delegate_requests_access_and_submits_a_job_as_its_member(w):
    analyst, result = w.delegate()
    assert result == (Code.OK, "")
    account = w.state("accounts/bank.delegate-analyst")
    assert {k: account[k] for k in ("member", "kind", "public_key", "powers", "status", "nonce")} == {
        "member": "bank", "kind": "delegate", "public_key": analyst.public_key,
        "powers": ["access.Request", "jobs.Submit"], "status": "active", "nonce": 0}
    assert w.events("KeyDelegated") == [{"member": "bank", "account": "bank.delegate-analyst",
                                         "public_key": analyst.public_key, "powers": ["access.Request", "jobs.Submit"],
                                         "expires_at": account["expires_at"]}]
    bank_nonce = w.state("accounts/bank")["nonce"]
    assert w.list()[0] == Code.OK
    assert w.send(analyst, "access.Request", {"id": "g-1", "asset": "telco.subscribers", "operations": ["psi"],
                                              "purpose": "joint marketing", "expires_at": w.chain.t0 + 3600,
                                              "max_runs": 5}) == (Code.OK, "")
    assert w.state("access/g-1")["consumer"] == "bank"
    assert w.send(w.telco, "access.Approve", {"id": "g-1"})[0] == Code.OK
    assert w.send(analyst, "jobs.Submit", {"id": "j-1", "type": "psi", "max_price": 150, "timeout_s": 600,
                                           "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]}) == (Code.OK, "")
    assert w.state("jobs/j-1")["consumer"] == "bank"
    assert w.balance("bank") == 10_000 - 150 and w.state("bank/escrow/j-1")["amount"] == 150
    assert w.state("accounts/bank.delegate-analyst")["nonce"] == 2  # its own nonces, not the member's
    assert w.state("accounts/bank")["nonce"] == bank_nonce


@pytest.mark.parametrize("type_,payload", [
    ("members.RotateKey", {"public_key": Identity.generate("x").public_key}),
    ("members.Delegate", {"label": "more", "public_key": Identity.generate("x").public_key,
                          "powers": ["jobs.Submit"], "expires_at": 1_700_000_500}),
    ("members.Undelegate", {"account": "bank.delegate-analyst"}),
    ("members.SetNode", {"node": {"public_key": Identity.generate("x").public_key, "endpoint": "127.0.0.1:1"}}),
    ("bank.Transfer", {"to": "telco", "amount": 10}),
    ("access.Revoke", {"id": "g-1", "reason": "x"}),
    ("jobs.Abort", {"job": "j-1", "reason": "x"}),
])
def test_a_delegate_signs_nothing_outside_its_powers(w, type_, payload):
    analyst, _ = w.delegate()
    before = w.chain.state()
    raw = w.chain.tx(analyst, type_, payload)
    checked = w.chain.check(raw)
    assert checked.code == Code.UNAUTHORIZED and f"not {type_}" in checked.log
    [result] = w.chain.block(raw)
    assert result.code == Code.UNAUTHORIZED and "may sign only access.Request, jobs.Submit" in result.log
    after = w.chain.state()
    assert {k: v for k, v in after.items() if not k.startswith("events/")} == \
        {k: v for k, v in before.items() if not k.startswith("events/")}  # not even its nonce


def test_a_delegate_may_sign_only_the_powers_it_was_given(w):
    submitter, _ = w.delegate("submitter", powers=("jobs.Submit",))
    code, log = w.send(submitter, "access.Request", {"id": "g-1", "asset": "telco.subscribers", "operations": ["psi"],
                                                     "purpose": "p", "expires_at": w.chain.t0 + 3600, "max_runs": 1})
    assert code == Code.UNAUTHORIZED and "may sign only jobs.Submit, not access.Request" in log


def test_an_expired_delegate_is_refused(w):
    w.granted()
    analyst, result = w.delegate(expires_in=25)
    assert result[0] == Code.OK
    assert w.send(analyst, "jobs.Submit", {"id": "j-1", "type": "psi", "max_price": 150, "timeout_s": 600,
                                           "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})[0] == Code.OK
    w.chain.block()
    w.chain.block()  # 30 s after the Delegate's block: past its expiry
    code, log = w.send(analyst, "jobs.Submit", {"id": "j-2", "type": "psi", "max_price": 150, "timeout_s": 600,
                                                "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})
    assert code == Code.UNAUTHORIZED and "bank.delegate-analyst expired at" in log
    assert w.state("jobs/j-2") is None


def test_undelegated_is_refused_and_a_label_can_be_delegated_again_with_a_new_key(w):
    w.granted()
    analyst, _ = w.delegate()
    assert w.send(w.bank, "members.Undelegate", {"account": "bank.delegate-analyst"}) == (Code.OK, "")
    assert w.events("KeyUndelegated") == [{"member": "bank", "account": "bank.delegate-analyst"}]
    code, log = w.send(analyst, "jobs.Submit", {"id": "j-1", "type": "psi", "max_price": 150, "timeout_s": 600,
                                                "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})
    assert code == Code.UNAUTHORIZED and "was undelegated at height" in log
    code, log = w.send(w.bank, "members.Undelegate", {"account": "bank.delegate-analyst"})
    assert code == Code.INVALID_STATE and "already undelegated" in log
    assert w.delegate(key=analyst)[1][0] == Code.CONFLICT  # its old key stays used
    again, result = w.delegate()
    assert result == (Code.OK, "")
    assert w.send(again, "jobs.Submit", {"id": "j-1", "type": "psi", "max_price": 150, "timeout_s": 600,
                                         "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})[0] == Code.OK


def test_a_suspended_members_delegates_sign_nothing_until_it_is_reinstated(w):
    w.granted()
    analyst, _ = w.delegate()
    assert w.send(w.assoc, "members.Suspend", {"member": "bank", "reason": "audit"})[0] == Code.OK
    code, log = w.send(analyst, "jobs.Submit", {"id": "j-1", "type": "psi", "max_price": 150, "timeout_s": 600,
                                                "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})
    assert code == Code.SUSPENDED_SIGNER and "suspended member" in log
    assert w.send(w.assoc, "members.Reinstate", {"member": "bank"})[0] == Code.OK
    assert w.send(analyst, "jobs.Submit", {"id": "j-1", "type": "psi", "max_price": 150, "timeout_s": 600,
                                           "inputs": [{"asset": "telco.subscribers", "grant": "g-1"}]})[0] == Code.OK


def test_only_the_members_own_key_delegates_and_undelegates(w):
    w.delegate()
    for who in (w.bank_node, w.assoc):  # a node key; the association, for itself or for the bank
        code, log = w.delegate(by=who)[1]
        assert code == Code.UNAUTHORIZED, log
        code, log = w.send(who, "members.Undelegate", {"account": "bank.delegate-analyst"})
        assert code in (Code.UNAUTHORIZED, Code.NOT_FOUND), log
    assert "own" in w.delegate(by=w.bank_node)[1][1]
    assert "its keys are the board's" in w.delegate(by=w.assoc)[1][1]
    code, log = w.send(w.telco, "members.Undelegate", {"account": "bank.delegate-analyst"})
    assert code == Code.NOT_FOUND and "not a delegate of telco" in log
    code, log = w.send(w.bank, "members.Undelegate", {"account": "bank.node"})
    assert code == Code.NOT_FOUND
    assert w.state("accounts/bank.delegate-analyst")["status"] == "active"


def test_a_key_any_account_holds_or_held_is_refused(w):
    leaked = Identity.generate("telco")
    assert w.send(w.assoc, "members.Recover", {"account": "telco", "public_key": leaked.public_key,
                                               "reason": "drill"})[0] == Code.OK  # telco's first key: revoked
    first, _ = w.delegate("first")
    for used, holder in ((w.bank, "bank"), (w.telco_node, "telco.node"), (first, "bank.delegate-first"),
                         (w.telco, "telco"), (leaked, "telco")):
        code, log = w.delegate("second", key=used)[1]
        assert code == Code.CONFLICT and f"already used by account {holder}" in log


def test_a_member_has_a_bounded_number_of_delegates(w):
    for i in range(MAX_DELEGATES):
        assert w.delegate(f"d{i}")[1][0] == Code.OK
    code, log = w.delegate("one-more")[1]
    assert code == Code.CONFLICT and f"has {MAX_DELEGATES} delegates" in log
    assert w.delegate("d3")[1][0] == Code.CONFLICT  # active: undelegate it first
    assert w.send(w.bank, "members.Undelegate", {"account": "bank.delegate-d3"})[0] == Code.OK
    assert w.delegate("d3")[1][0] == Code.OK  # a label reused: still 16 accounts
    assert w.delegate("one-more")[1][0] == Code.CONFLICT


@pytest.mark.parametrize("expires_in", [-10, 0, MAX_DELEGATION_S + 1, 10 * 365 * DAY])
def test_expires_at_must_be_ahead_and_bounded(w, expires_in):
    code, log = w.delegate(expires_in=expires_in)[1]
    assert code == Code.INVALID_PAYLOAD and "expires_at must be after the block's time" in log
    assert w.state("accounts/bank.delegate-analyst") is None


def test_ninety_days_ahead_is_allowed(w):
    assert w.delegate(expires_in=MAX_DELEGATION_S)[1][0] == Code.OK


@pytest.mark.parametrize("change", [
    {"public_key": "not base64!"},
    {"public_key": base64.b64encode(b"\x01" * 31).decode()},
    {"public_key": "ab" * 32},  # hex is not the chain's encoding of a key
    {"powers": ["members.RotateKey"]},
    {"powers": []},
    {"label": "Upper"},
    {"label": "a.b"},
    {"label": "x" * 24},
    {"expires_at": "soon"},
])
def test_malformed_delegations_are_refused(w, change):
    payload = {"label": "analyst", "public_key": Identity.generate("k").public_key, "powers": ["jobs.Submit"],
               "expires_at": w.now() + DAY, **change}
    code, _ = w.send(w.bank, "members.Delegate", payload)
    assert code == Code.INVALID_PAYLOAD
    assert w.state("accounts/bank.delegate-analyst") is None


def test_a_label_that_would_make_the_account_id_too_long_is_refused(tmp_path):
    w = Delegates(tmp_path)
    long_member = Identity.generate("m" * 40)
    assert w.send(w.assoc, "members.Register", {"id": long_member.account, "name": "Long", "roles": ["consumer"],
                                                "public_key": long_member.public_key})[0] == Code.OK
    code, log = w.delegate("x" * 15, by=long_member)[1]
    assert code == Code.INVALID_PAYLOAD and "64 characters" in log
    assert w.delegate("x" * 14, by=long_member)[1][0] == Code.OK


def test_no_delegable_power_is_one_of_the_associations():
    """A delegate's tx runs acting as its member, which governance.authorize does not check again:
    that is safe only while no delegable type is one the association's powers govern."""
    assert not set(get_args(Power)) & (set(BY_TYPE) | ASSOCIATION_ONLY)
