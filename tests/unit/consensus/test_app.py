"""The state machine driven directly through its ABCI methods, with no node: pure logic."""

from __future__ import annotations

import json

import pytest
from chainsim import Harness, register
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.tx import MAX_TX_BYTES, Code

@pytest.fixture
def chain(tmp_path):
    return Harness(tmp_path / "chain.sqlite", Identity.generate("association"))


def test_register_commits_member_and_events(chain):
    bank = Identity.generate("bank-a")
    [result] = chain.block(register(chain, bank))
    assert result.code == Code.OK
    assert [e.type for e in result.events] == ["MemberRegistered"]
    member = json.loads(chain.state()["members/bank-a"])
    assert member["status"] == "active" and member["roles"] == ["provider"]
    # genesis (tx index -1) and the tx's event are in the relay's outbox
    assert [(e.tx_index, e.type) for e in chain.db.events_after((0, -2, -1))] == [
        (-1, "MemberRegistered"), (-1, "PolicyPublished"), (-1, "BoardConfigured"), (0, "MemberRegistered")]


def test_same_blocks_give_same_app_hash_on_two_validators(tmp_path):
    association, bank = Identity.generate("association"), Identity.generate("bank-a")
    a, b = Harness(tmp_path / "a.sqlite", association), Harness(tmp_path / "b.sqlite", association)
    raw = register(a, bank)
    for h in (a, b):
        h.block(raw)
        h.block()
    assert a.db.app_hash == b.db.app_hash and len(a.db.app_hash) == 32
    info = a.app.info(abci.RequestInfo())
    assert info.last_block_height == 2 and info.last_block_app_hash == a.db.app_hash


def test_bad_envelopes_are_rejected_in_checktx_with_distinct_codes_and_no_state_change(chain):
    bank, eve = Identity.generate("bank-a"), Identity.generate("eve")
    chain.block(register(chain, bank))
    before = chain.state()
    good = {"public_key": Identity.generate("x").public_key}
    wrong_sig = json.loads(chain.tx(bank, "members.RotateKey", good, nonce=1))
    wrong_sig["sig"] = Identity.generate("bank-a").sign(b"other")
    cases = {
        Code.UNDECODABLE: b"\x00garbage",
        Code.OVERSIZE: b"x" * (MAX_TX_BYTES + 1),
        Code.WRONG_CHAIN: chain.tx(bank, "members.RotateKey", good, nonce=1, chain="other-chain"),
        Code.UNKNOWN_TYPE: chain.tx(bank, "members.Explode", {}, nonce=1),
        Code.UNKNOWN_SIGNER: chain.tx(eve, "members.RotateKey", good, nonce=1),
        Code.BAD_SIGNATURE: json.dumps(wrong_sig, sort_keys=True, separators=(",", ":")).encode(),
        Code.BAD_NONCE: chain.tx(bank, "members.RotateKey", good, nonce=5),
        Code.INVALID_PAYLOAD: chain.tx(bank, "members.RotateKey", {"public_key": "short"}, nonce=1),
        Code.UNAUTHORIZED: chain.tx(bank, "members.Suspend", {"member": "bank-a", "reason": "x"}, nonce=1),
    }
    for code, raw in cases.items():
        resp = chain.check(raw)
        assert resp.code == code, (code, resp.log)
        assert resp.log
    assert chain.state() == before


def test_replayed_tx_is_rejected_and_rejected_tx_in_block_spends_only_its_nonce(chain):
    bank = Identity.generate("bank-a")
    chain.block(register(chain, bank))
    rotate = chain.tx(bank, "members.RotateKey", {"public_key": bank.public_key})  # same key: the replay still verifies
    assert chain.block(rotate)[0].code == Code.OK
    assert chain.block(rotate)[0].code == Code.BAD_NONCE  # replay
    not_allowed = chain.tx(bank, "members.Suspend", {"member": "bank-a", "reason": "x"})
    before = json.loads(chain.state()["members/bank-a"])
    assert chain.block(not_allowed)[0].code == Code.UNAUTHORIZED
    assert json.loads(chain.state()["members/bank-a"]) == before
    assert json.loads(chain.state()["accounts/bank-a"])["nonce"] == 2


def test_suspended_member_cannot_sign(chain):
    bank = Identity.generate("bank-a")
    chain.block(register(chain, bank))
    chain.block(chain.tx(chain.association, "members.Suspend", {"member": "bank-a", "reason": "audit"}))
    resp = chain.check(chain.tx(bank, "members.RotateKey", {"public_key": Identity.generate("k").public_key}))
    assert resp.code == Code.SUSPENDED_SIGNER


def test_mempool_check_state_orders_nonces_of_one_signer(chain):
    bank = Identity.generate("bank-a")
    chain.block(register(chain, bank))
    first = chain.tx(bank, "members.RotateKey", {"public_key": bank.public_key})
    second = chain.tx(bank, "members.RotateKey", {"public_key": bank.public_key})
    assert chain.check(first).code == Code.OK
    assert chain.check(second).code == Code.OK  # nonce 2 admitted after nonce 1 in the mempool
    assert chain.check(first).code == Code.BAD_NONCE


def test_a_tx_rejected_in_check_tx_leaves_the_mempool_state_as_it_was(chain):
    # The signer's account is already in the check state (its first tx), so the rejected tx's
    # handler reads the check state's copy: spending the nonce there would refuse the next tx.
    bank = Identity.generate("bank-a")
    chain.block(register(chain, bank))
    assert chain.check(chain.tx(bank, "members.RotateKey", {"public_key": bank.public_key})).code == Code.OK
    refused = chain.tx(bank, "members.Suspend", {"member": "bank-a", "reason": "x"}, nonce=2)
    assert chain.check(refused).code == Code.UNAUTHORIZED
    retry = chain.tx(bank, "members.RotateKey", {"public_key": bank.public_key}, nonce=2)
    assert chain.check(retry).code == Code.OK
