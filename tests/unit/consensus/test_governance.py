"""Consortium governance through the app's ABCI methods: the board's proposals, approvals and
expiry, the powers parameter, key recovery, validator updates (and CometBFT's rules for them),
height-gated upgrades, and chains whose genesis predates boards."""

from __future__ import annotations

import base64
import json

import pytest
from chainsim import Harness, NextRelease, register
from google.protobuf.timestamp_pb2 import Timestamp
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.tx import Code
from services.consensus.app import RdxApp, UpgradeRequired
from services.consensus.governance.powers import ASSOCIATION_ONLY, BY_TYPE, DEFAULT_POWERS
from services.consensus.validators.keeper import address

DAY = 86_400


def seats(n: int) -> list[Identity]:
    return [Identity.generate(f"association.board-s{i}") for i in range(n)]


def vkey() -> str:
    return Identity.generate("validator").public_key


class Board:
    """A chain with a 2-of-3 board, the default powers, and four validators of power 10."""

    def __init__(self, tmp_path, threshold: int = 2, n: int = 3, validators: int = 4):
        self.assoc = Identity.generate("association")
        self.seats = seats(n)
        self.vals = [vkey() for _ in range(validators)]
        self.chain = Harness(tmp_path / "chain.sqlite", self.assoc, balances={}, board=self.seats,
                             threshold=threshold, powers=dict(DEFAULT_POWERS), validators=[(k, 10) for k in self.vals])
        self.member = Identity.generate("bank")
        assert self.one(register(self.chain, self.member, ("consumer",))) == (Code.OK, "")  # an officer power

    def one(self, raw: bytes) -> tuple[int, str]:
        [result] = self.chain.block(raw)
        return result.code, result.log

    def send(self, who: Identity, type_: str, payload: dict) -> tuple[int, str]:
        return self.one(self.chain.tx(who, type_, payload))

    def propose(self, seat: Identity, pid: str, type_: str, payload: dict, **extra) -> tuple[int, str]:
        return self.send(seat, "board.Propose", {"id": pid, "action": {"type": type_, "payload": payload}, **extra})

    def approve(self, seat: Identity, pid: str) -> tuple[int, str]:
        return self.send(seat, "board.Approve", {"id": pid})

    def state(self, key: str):
        raw = self.chain.state().get(key)
        return None if raw is None else json.loads(raw)

    def balance(self, member: str) -> int:
        return self.state(f"bank/balance/{member}") or 0

    def events(self) -> list[str]:
        return [e.type for r in self.chain.last for e in r.events]


@pytest.fixture
def b(tmp_path) -> Board:
    return Board(tmp_path)


def deposit(member: str, amount: int = 500) -> dict:
    return {"to": member, "amount": amount, "reference": "wire 42"}


# -- proposals, approvals, expiry -------------------------------------------------------------------
def test_k_minus_1_approvals_do_nothing_and_the_kth_executes_in_its_block(b):
    code, log = b.send(b.assoc, "bank.Deposit", deposit("bank"))
    assert code == Code.UNAUTHORIZED and "needs the board: 2 of 3" in log  # credits: the board's by default
    assert b.propose(b.seats[0], "p-1", "bank.Deposit", deposit("bank"))[0] == Code.OK
    assert b.balance("bank") == 0 and b.state("governance/proposals/p-1")["status"] == "open"  # 1 of 2
    height = b.chain.height + 1
    assert b.approve(b.seats[2], "p-1")[0] == Code.OK
    assert b.balance("bank") == 500
    proposal = b.state("governance/proposals/p-1")
    assert proposal["status"] == "executed" and proposal["closed_height"] == height
    assert proposal["approvals"] == [b.seats[0].account, b.seats[2].account]
    assert b.events() == ["ProposalApproved", "ProposalExecuted", "CreditsDeposited"]
    assert b.approve(b.seats[1], "p-1")[0] == Code.INVALID_STATE  # executed: nothing more to approve
    assert b.balance("bank") == 500


def test_an_expired_proposal_cannot_execute(b):
    expires = b.chain.t0 + (b.chain.height + 3) * 10  # block time advances 10 s a block
    assert b.propose(b.seats[0], "p-exp", "bank.Deposit", deposit("bank"), expires_at=expires)[0] == Code.OK
    b.chain.block()
    b.chain.block()  # the block at `expires`: swept before its txs
    assert b.state("governance/proposals/p-exp")["status"] == "expired"
    assert [e.type for e in b.chain.db.events_after((b.chain.height, -2, -1))] == ["ProposalExpired"]
    code, log = b.approve(b.seats[1], "p-exp")
    assert code == Code.INVALID_STATE and "expired" in log
    assert b.balance("bank") == 0


def test_an_approval_after_the_expiry_time_is_refused_even_before_the_sweep(b):
    expires = b.chain.t0 + (b.chain.height + 2) * 10
    assert b.propose(b.seats[0], "p-late", "bank.Deposit", deposit("bank"), expires_at=expires)[0] == Code.OK
    # One block holds the late approval: the sweep runs first and marks it expired.
    code, _ = b.approve(b.seats[1], "p-late")
    assert code == Code.INVALID_STATE and b.balance("bank") == 0


def test_who_may_propose_and_approve(b):
    outsider = Identity.generate("association.board-x")
    assert b.propose(b.member, "p-m", "bank.Deposit", deposit("bank"))[0] == Code.UNAUTHORIZED
    assert b.propose(b.assoc, "p-o", "bank.Deposit", deposit("bank"))[0] == Code.UNAUTHORIZED  # the officer holds no seat
    assert b.chain.check(b.chain.tx(outsider, "board.Propose", {"id": "p-x", "action": {
        "type": "bank.Deposit", "payload": deposit("bank")}})).code == Code.UNKNOWN_SIGNER
    assert b.propose(b.seats[0], "p-1", "bank.Deposit", deposit("bank"))[0] == Code.OK
    assert b.approve(b.seats[0], "p-1")[0] == Code.CONFLICT  # the proposer already approved
    assert b.propose(b.seats[1], "p-1", "bank.Deposit", deposit("bank"))[0] == Code.CONFLICT  # the id is taken
    assert b.approve(b.member, "p-1")[0] == Code.UNAUTHORIZED
    assert b.approve(b.seats[1], "nope")[0] == Code.NOT_FOUND
    assert b.balance("bank") == 0


def test_a_board_key_never_acts_alone_when_k_is_above_1(b):
    code, log = b.send(b.seats[0], "bank.Deposit", deposit("bank"))
    assert code == Code.UNAUTHORIZED and "board key" in log
    assert b.send(b.seats[0], "members.Suspend", {"member": "bank", "reason": "x"})[0] == Code.UNAUTHORIZED
    assert b.send(b.seats[0], "members.RotateKey", {"public_key": b.seats[0].public_key})[0] == Code.OK  # its own key


def test_a_proposal_must_name_a_valid_action_of_the_association(b):
    code, log = b.propose(b.seats[0], "p-1", "assets.List", {"id": "a"})
    assert code == Code.INVALID_PAYLOAD and "not an action of the association" in log
    assert b.propose(b.seats[0], "p-2", "board.Approve", {"id": "p-1"})[0] == Code.INVALID_PAYLOAD
    code, log = b.propose(b.seats[0], "p-3", "bank.Deposit", {"to": "bank", "amount": -5, "reference": "r"})
    assert code == Code.INVALID_PAYLOAD and "amount" in log
    assert b.propose(b.seats[0], "p-4", "bank.Deposit", deposit("bank"), expires_at=b.chain.t0)[0] == Code.INVALID_PAYLOAD
    assert b.state("governance/proposals/p-1") is None


def test_an_action_refused_at_execution_fails_the_proposal_and_changes_nothing(b):
    assert b.propose(b.seats[0], "p-1", "bank.Deposit", deposit("nobody"))[0] == Code.OK
    before = b.chain.state()
    assert b.approve(b.seats[1], "p-1")[0] == Code.OK  # the approval itself stands
    proposal = b.state("governance/proposals/p-1")
    assert proposal["status"] == "failed" and proposal["code"] == Code.NOT_FOUND and "nobody" in proposal["reason"]
    assert b.events() == ["ProposalApproved", "ProposalFailed"]
    after = b.chain.state()
    changed = {k for k in after if before.get(k) != after[k]}
    assert not any(k.startswith("bank/") for k in changed)


def test_open_proposals_are_bounded(b, monkeypatch):
    from services.consensus.governance import handlers

    monkeypatch.setattr(handlers, "MAX_OPEN_PROPOSALS", 2)
    assert b.propose(b.seats[0], "p-1", "bank.Deposit", deposit("bank"))[0] == Code.OK
    assert b.propose(b.seats[0], "p-2", "bank.Deposit", deposit("bank"))[0] == Code.OK
    assert b.propose(b.seats[0], "p-3", "bank.Deposit", deposit("bank"))[0] == Code.INVALID_STATE


# -- the board changes itself; the powers parameter ---------------------------------------------------
def test_the_board_reconfigures_itself_and_removed_seats_lose_their_vote(b):
    t1 = Identity.generate("association.board-t1")
    payload = {"seats": [{"name": "s0", "public_key": b.seats[0].public_key},
                         {"name": "t1", "public_key": t1.public_key}], "threshold": 2}
    assert b.propose(b.seats[1], "p-open", "bank.Deposit", deposit("bank"))[0] == Code.OK  # s1 approved it
    assert b.propose(b.seats[0], "p-board", "governance.ConfigureBoard", payload)[0] == Code.OK
    assert b.approve(b.seats[2], "p-board")[0] == Code.OK
    board = b.state("governance/board")
    assert board["seats"] == ["association.board-s0", "association.board-t1"] and board["threshold"] == 2
    assert b.approve(b.seats[2], "p-open")[0] == Code.UNAUTHORIZED  # s2 holds no seat any more
    assert b.approve(b.seats[0], "p-open")[0] == Code.OK
    assert b.balance("bank") == 0  # s1's approval no longer counts: 1 of 2
    assert b.approve(t1, "p-open")[0] == Code.OK
    assert b.balance("bank") == 500


def test_the_powers_parameter_moves_a_power_to_the_officer_but_never_the_board_itself(b):
    cfg = {"seats": [{"name": f"s{i}", "public_key": s.public_key} for i, s in enumerate(b.seats)], "threshold": 2}
    code, log = b.propose(b.seats[0], "p-bad", "governance.ConfigureBoard", {**cfg, "powers": {"board": "officer"}})
    assert code == Code.INVALID_PAYLOAD
    assert b.propose(b.seats[0], "p-1", "governance.ConfigureBoard", {**cfg, "powers": {"credits": "officer",
                                                                                         "members": "board"}})[0] == Code.OK
    assert b.approve(b.seats[1], "p-1")[0] == Code.OK
    assert b.send(b.assoc, "bank.Deposit", deposit("bank"))[0] == Code.OK
    carol = Identity.generate("carol")
    assert b.one(register(b.chain, carol))[0] == Code.UNAUTHORIZED  # admitting members is the board's now
    assert b.send(b.assoc, "governance.ScheduleUpgrade", {"name": "u", "height": 99, "app_version": 2})[0] == Code.UNAUTHORIZED


def test_only_the_association_sends_the_association_s_transactions(b):
    for type_, payload in [("governance.ConfigureBoard", {"seats": [{"name": "me", "public_key": b.member.public_key}],
                                                           "threshold": 1}),
                           ("validators.Update", {"changes": [{"pub_key": vkey(), "power": 1}]}),
                           ("members.Recover", {"account": "association", "public_key": b.member.public_key,
                                                "reason": "mine"}),
                           ("governance.SetParams", {"params": {"association_fee_bps": 0}}),
                           ("governance.ScheduleUpgrade", {"name": "u", "height": 99, "app_version": 2})]:
        code, log = b.send(b.member, type_, payload)
        assert code == Code.UNAUTHORIZED, (type_, log)
    assert b.state("governance/board")["threshold"] == 2


def test_every_association_only_type_has_a_power_and_every_power_has_a_default():
    assert ASSOCIATION_ONLY <= set(BY_TYPE)
    assert set(BY_TYPE.values()) <= set(DEFAULT_POWERS) | {"board", "upgrade"}


# -- key recovery ----------------------------------------------------------------------------------
def test_a_key_replaced_by_the_board_stops_working_at_that_height(b):
    new_key = Identity("bank", Identity.generate("bank").signing_key)
    old_tx = b.chain.tx(b.member, "bank.Transfer", {"to": "association", "amount": 1})  # signed before
    assert b.chain.check(old_tx).code != Code.BAD_SIGNATURE
    assert b.propose(b.seats[0], "p-rec", "members.Recover", {"account": "bank", "public_key": new_key.public_key,
                                                               "reason": "laptop stolen"})[0] == Code.OK
    recover = b.chain.tx(b.seats[1], "board.Approve", {"id": "p-rec"})
    height = b.chain.height + 1
    results = b.chain.block(recover, old_tx)  # the old key's tx comes after the recovery in the same block
    assert results[0].code == Code.OK and results[1].code == Code.BAD_SIGNATURE
    assert b.state("accounts/bank")["public_key"] == new_key.public_key
    assert b.state("members/bank")["status"] == "active"  # contained without suspending the member
    assert b.state("revoked-keys/bank") == [{"public_key": b.member.public_key, "height": height,
                                             "reason": "laptop stolen"}]
    recovered = [e for e in b.chain.db.events_after((height, -2, -1)) if e.type == "KeyRecovered"]
    assert recovered and recovered[0].data["revoked_key"] == b.member.public_key
    b.chain.nonces["bank"] = b.state("accounts/bank")["nonce"]
    assert b.send(b.member, "members.RotateKey", {"public_key": b.member.public_key})[0] == Code.BAD_SIGNATURE
    b.chain.nonces["bank"] -= 1  # a tx that fails its signature spends no nonce
    assert b.send(new_key, "members.RotateKey", {"public_key": new_key.public_key})[0] == Code.OK


def test_a_node_key_is_recovered_the_same_way(tmp_path):
    b = Board(tmp_path, threshold=1, n=1)
    node, new_node = Identity.generate("telco.node"), Identity.generate("telco.node")
    telco = Identity.generate("telco")
    assert b.one(register(b.chain, telco, ("provider",), node)) == (Code.OK, "")
    assert b.propose(b.seats[0], "p-1", "members.Recover", {"account": "telco.node", "public_key": new_node.public_key,
                                                           "reason": "node rebuilt"})[0] == Code.OK  # 1 of 1: at once
    assert b.state("accounts/telco.node")["public_key"] == new_node.public_key
    assert b.send(node, "members.RotateKey", {"public_key": node.public_key})[0] == Code.BAD_SIGNATURE


# -- validator updates ------------------------------------------------------------------------------
def updates(resp: abci.ResponseFinalizeBlock) -> list[tuple[str, int]]:
    return [(base64.b64encode(u.pub_key.ed25519).decode(), u.power) for u in resp.validator_updates]


def test_validator_changes_are_returned_as_updates_in_finalize_block(b):
    joining = vkey()
    assert b.propose(b.seats[0], "p-add", "validators.Update",
                     {"changes": [{"pub_key": joining, "power": 10, "name": "validator-4"}]})[0] == Code.OK
    assert updates(b.chain.last_response) == []  # 1 of 2: nothing yet
    height = b.chain.height + 1
    assert b.approve(b.seats[1], "p-add")[0] == Code.OK
    assert updates(b.chain.last_response) == [(joining, 10)]
    v = b.state(f"validators/set/{address(joining)}")
    assert v["power"] == 10 and v["name"] == "validator-4" and v["height"] == height
    event = [e for e in b.chain.db.events_after((height, -2, -1)) if e.type == "ValidatorUpdated"][0]
    assert event.data["effective_height"] == height + 2
    b.chain.block()
    assert updates(b.chain.last_response) == []  # once


def test_updates_flow_through_the_proposal_execution_that_finalize_reuses(b, monkeypatch):
    joining = vkey()
    assert b.propose(b.seats[0], "p-add", "validators.Update", {"changes": [{"pub_key": joining, "power": 5}]})[0] == Code.OK
    raw = b.chain.tx(b.seats[1], "board.Approve", {"id": "p-add"})
    at = {"height": b.chain.height + 1, "time": Timestamp(seconds=b.chain.t0 + (b.chain.height + 1) * 10)}
    app = b.chain.app
    prepared = app.prepare_proposal(abci.RequestPrepareProposal(txs=[raw], max_tx_bytes=1 << 20, **at))
    assert app.process_proposal(abci.RequestProcessProposal(txs=list(prepared.txs), **at)).status == \
        abci.ResponseProcessProposal.ACCEPT
    monkeypatch.setattr(RdxApp, "_execute", lambda *a, **k: pytest.fail("FinalizeBlock executed the block again"))
    resp = app.finalize_block(abci.RequestFinalizeBlock(txs=list(prepared.txs), **at))
    assert [(base64.b64encode(u.pub_key.ed25519).decode(), u.power) for u in resp.validator_updates] == [(joining, 5)]


def test_a_key_rotated_and_a_validator_removed(b):
    new = vkey()
    assert b.propose(b.seats[0], "p-rot", "validators.Rotate", {"old_pub_key": b.vals[0], "new_pub_key": new})[0] == Code.OK
    assert b.approve(b.seats[1], "p-rot")[0] == Code.OK
    assert sorted(updates(b.chain.last_response)) == sorted([(b.vals[0], 0), (new, 10)])
    assert b.state(f"validators/set/{address(new)}")["power"] == 10
    assert b.propose(b.seats[0], "p-rm", "validators.Update", {"changes": [{"pub_key": b.vals[3], "power": 0}]})[0] == Code.OK
    assert b.approve(b.seats[1], "p-rm")[0] == Code.OK
    assert updates(b.chain.last_response) == [(b.vals[3], 0)]
    assert b.state(f"validators/set/{address(b.vals[3])}") is None
    assert b.propose(b.seats[0], "p-gone", "validators.Update", {"changes": [{"pub_key": b.vals[3], "power": 0}]})[0] == Code.OK
    assert b.approve(b.seats[1], "p-gone")[0] == Code.OK
    assert b.state("governance/proposals/p-gone")["code"] == Code.NOT_FOUND  # not in the set: CometBFT would halt


def test_no_block_moves_a_third_of_the_power(b):
    # Removing two of four (20 of 40) at once: refused.
    two = {"changes": [{"pub_key": b.vals[2], "power": 0}, {"pub_key": b.vals[3], "power": 0}]}
    assert b.propose(b.seats[0], "p-two", "validators.Update", two)[0] == Code.OK
    assert b.approve(b.seats[1], "p-two")[0] == Code.OK
    proposal = b.state("governance/proposals/p-two")
    assert proposal["status"] == "failed" and "removes 20 of 40" in proposal["reason"]
    assert updates(b.chain.last_response) == []
    # Adding 14 to 40 (a third or more): refused; 13 is under a third: accepted.
    assert b.propose(b.seats[0], "p-big", "validators.Update", {"changes": [{"pub_key": vkey(), "power": 14}]})[0] == Code.OK
    assert b.approve(b.seats[1], "p-big")[0] == Code.OK
    assert b.state("governance/proposals/p-big")["status"] == "failed"
    # Two proposals each fine alone, executed in one block, together remove a third: the second fails.
    for pid, v in (("p-a", b.vals[2]), ("p-b", b.vals[3])):
        assert b.propose(b.seats[0], pid, "validators.Update", {"changes": [{"pub_key": v, "power": 0}]})[0] == Code.OK
    results = b.chain.block(b.chain.tx(b.seats[1], "board.Approve", {"id": "p-a"}),
                            b.chain.tx(b.seats[1], "board.Approve", {"id": "p-b"}))
    assert [r.code for r in results] == [Code.OK, Code.OK]
    assert b.state("governance/proposals/p-a")["status"] == "executed"
    assert b.state("governance/proposals/p-b")["status"] == "failed"
    assert updates(b.chain.last_response) == [(b.vals[2], 0)]
    b.chain.block()  # next block: the other may go (10 of 30 is a third: still refused)
    assert b.propose(b.seats[0], "p-c", "validators.Update", {"changes": [{"pub_key": b.vals[3], "power": 0}]})[0] == Code.OK
    assert b.approve(b.seats[1], "p-c")[0] == Code.OK
    assert b.state("governance/proposals/p-c")["status"] == "failed"


# -- upgrades --------------------------------------------------------------------------------------
def test_an_upgrade_stops_the_old_binary_at_its_height_and_the_new_one_carries_on(tmp_path):
    b = Board(tmp_path, threshold=1, n=1)
    at = b.chain.height + 4
    assert b.propose(b.seats[0], "p-up", "governance.ScheduleUpgrade", {"name": "v2", "height": at, "app_version": 2})[0] == Code.OK
    assert b.state("governance/upgrade") == {"name": "v2", "height": at, "app_version": 2,
                                             "scheduled_height": b.chain.height}
    while b.chain.height < at - 1:
        b.chain.block()
    committed = b.chain.state()
    with pytest.raises(UpgradeRequired, match="needs app version 2"):
        b.chain.block()
    b.chain.height -= 1
    assert b.chain.db.height == at - 1 and b.chain.state() == committed  # nothing of height `at` applied
    req = {"height": at, "time": Timestamp(seconds=b.chain.t0 + at * 10)}
    with pytest.raises(UpgradeRequired):  # a proposal for that height too: the node stops, whoever proposes
        b.chain.app.process_proposal(abci.RequestProcessProposal(txs=[], **req))
    # The new binary on the same state.
    b.chain.app = NextRelease(b.chain.db, b.chain.app.chain_id)
    assert b.chain.app.info(abci.RequestInfo()).app_version == 1
    b.chain.block()
    assert b.chain.last_response.consensus_param_updates.version.app == 2
    assert b.chain.app.info(abci.RequestInfo()).app_version == 2
    assert b.state("governance/upgrade") is None
    assert [e.type for e in b.chain.db.events_after((at, -2, -1))] == ["UpgradeApplied"]
    b.chain.block()
    assert not b.chain.last_response.HasField("consensus_param_updates")
    # Rolled back to the old binary after the upgrade: it stops rather than apply version-2 blocks.
    b.chain.app = RdxApp(b.chain.db, b.chain.app.chain_id)
    with pytest.raises(UpgradeRequired, match="the chain runs app version 2"):
        b.chain.block()


def test_an_upgrade_must_be_ahead_and_newer_and_can_be_cancelled(tmp_path):
    b = Board(tmp_path, threshold=1, n=1)
    s = b.seats[0]
    b.chain.block()
    assert b.propose(s, "p1", "governance.ScheduleUpgrade", {"name": "v2", "height": b.chain.height, "app_version": 2})[0] == Code.OK
    assert b.state("governance/proposals/p1")["code"] == Code.INVALID_PAYLOAD
    assert b.propose(s, "p2", "governance.ScheduleUpgrade", {"name": "v2", "height": 10**6, "app_version": 2})[0] == Code.OK
    assert b.propose(s, "p3", "governance.ScheduleUpgrade", {"name": "v3", "height": 10**6, "app_version": 3})[0] == Code.OK
    assert b.state("governance/proposals/p3")["code"] == Code.CONFLICT
    assert b.propose(s, "p4", "governance.CancelUpgrade", {"name": "v2"})[0] == Code.OK
    assert b.state("governance/upgrade") is None and b.state("governance/proposals/p4")["status"] == "executed"


def test_params_change_by_the_board(b):
    assert b.propose(b.seats[0], "p1", "governance.SetParams", {"params": {"association_fee_bps": 300}})[0] == Code.OK
    assert b.approve(b.seats[1], "p1")[0] == Code.OK
    assert b.state("params")["association_fee_bps"] == 300
    assert b.propose(b.seats[0], "p2", "governance.SetParams", {"params": {"no_such": 1}})[0] == Code.OK
    assert b.approve(b.seats[1], "p2")[0] == Code.OK
    assert b.state("governance/proposals/p2")["code"] == Code.INVALID_PAYLOAD


# -- chains made before boards ----------------------------------------------------------------------
def test_a_genesis_without_a_board_loads_as_a_board_of_the_association_s_key_alone(tmp_path):
    assoc, bank = Identity.generate("association"), Identity.generate("bank")
    h = Harness(tmp_path / "chain.sqlite", assoc, legacy=True)
    h.block()  # genesis state is committed with the first block
    keys = set(h.state())
    assert {k for k in keys if not k.startswith("account-keys/")} == {"members/association", "accounts/association",
                                                                     "params", "policy/current"}
    assert len([k for k in keys if k.startswith("account-keys/")]) == 1  # the association's key, taken
    assert [r.code for r in h.block(register(h, bank, ("consumer",)))] == [Code.OK]
    # the association acts alone as before, on every power (credits included) ...
    for type_, payload in [("bank.Deposit", deposit("bank")), ("governance.SetParams", {"params": {"compute_fee_bps": 50}})]:
        assert [r.code for r in h.block(h.tx(assoc, type_, payload))] == [Code.OK], type_
    # ... and through a proposal, which its own approval executes
    assert [r.code for r in h.block(h.tx(assoc, "board.Propose", {"id": "p-1", "action": {
        "type": "bank.Deposit", "payload": deposit("bank", 1)}}))] == [Code.OK]
    assert json.loads(h.state()["bank/balance/bank"]) == 501
    # its validator set was never recorded, so it cannot be changed on chain
    [r] = h.block(h.tx(assoc, "validators.Update", {"changes": [{"pub_key": vkey(), "power": 1}]}))
    assert r.code == Code.INVALID_STATE and "did not record its validator set" in r.log


def test_the_governance_invariants_catch_a_broken_board_index_or_validator_set(b):
    from services.consensus.invariants import violations
    from services.consensus.state import Overlay

    assert b.propose(b.seats[0], "p-1", "bank.Deposit", deposit("bank"))[0] == Code.OK
    assert violations(Overlay(b.chain.db)) == []
    for key, change, expected in [
        ("governance/board", lambda v: {**v, "threshold": 4}, "board threshold 4 of 3"),
        ("governance/board", lambda v: {**v, "seats": [*v["seats"], "bank"]}, "seat bank is not an account"),
        ("governance/proposals/p-1", lambda v: {**v, "status": "expired"}, "open-proposal index"),
    ]:
        state = Overlay(b.chain.db)
        state.set(key, change(state.get(key)))
        assert any(expected in v for v in violations(state)), expected
    state = Overlay(b.chain.db)
    for v in b.vals:
        state.delete(f"validators/set/{address(v)}")
    assert "the recorded validator set is empty" in violations(state)


def test_checktx_judges_each_validator_change_on_its_own(tmp_path):
    """Three additions of 10 to a set of 40, each fine in a block of its own: the mempool takes all
    three (a block holding them all executes the first; with it, either other would add 20 of 40)."""
    b = Board(tmp_path, threshold=1, n=1)
    seat = b.seats[0]
    raws = [b.chain.tx(seat, "validators.Update", {"changes": [{"pub_key": vkey(), "power": 10}]}) for _ in range(3)]
    assert [b.chain.check(raw).code for raw in raws] == [Code.OK, Code.OK, Code.OK]
    results = b.chain.block(*raws)
    assert [r.code for r in results] == [Code.OK, Code.INVALID_STATE, Code.INVALID_STATE]
