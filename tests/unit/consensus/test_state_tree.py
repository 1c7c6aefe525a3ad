"""The app hash as the root of the state tree (issue 18): identical to a fresh build over the whole
state after every block, the same after a restart and on a replay, the migration of a chain made
before the tree at its upgrade, and ABCI Query with prove=true (answers checked by the verifier
members run, services/common/proofs.py; hostile paths answered with a code)."""

from __future__ import annotations

import json

import chainsim
import pytest
from chainsim import Harness, NextRelease, register
from tendermint.abci import types_pb2 as abci

from services.common import proofs
from services.common.identity import Identity
from services.common.tx import Code
from services.consensus.app import STATE_TREE, RdxApp
from services.consensus.merkle import StateTree
from services.consensus.state import Database

pytestmark = pytest.mark.unit


def fresh_root(chain: Harness) -> bytes:
    """The root of a tree built from nothing over the chain's whole committed state."""
    return StateTree(lambda version, h: None).build([(k, v.encode()) for k, v in chain.state().items()], {}, 0)[0]


def prove(app: RdxApp, key: str, **kw) -> abci.ResponseQuery:
    return app.query(abci.RequestQuery(path=f"/{key}", prove=True, **kw))


def checked(app: RdxApp, key: str) -> bytes | None:
    answer = prove(app, key)
    assert answer.code in (Code.OK, Code.NOT_FOUND), answer.log
    assert answer.height == app.db.height
    value = answer.value if answer.code == Code.OK else None
    proofs.verify(app.db.app_hash, key, value, answer.proof_ops)
    return value


def grow(chain: Harness, people: list[Identity]) -> list[list[bytes]]:
    """A few blocks: registrations, then transfers that rewrite balances and nonces."""
    blocks = [[register(chain, p, ("consumer",)) for p in people[:3]],
              [register(chain, p, ("consumer",)) for p in people[3:]], []]
    blocks.append([chain.tx(people[0], "bank.Transfer", {"to": people[1].account, "amount": 5})])
    return blocks


def test_the_app_hash_is_the_root_of_the_whole_state_after_every_block_and_answers_are_proven(tmp_path):
    people = [Identity.generate(f"m{i}") for i in range(6)]
    chain = Harness(tmp_path / "a.sqlite", Identity.generate("association"),
                    balances={people[0].account: 100})
    assert chain.db.get(STATE_TREE) is None  # genesis state waits for block 1
    for txs in grow(chain, people):
        results = chain.block(*txs)
        assert all(r.code == Code.OK for r in results), [r.log for r in results]
        assert chain.last_response.app_hash == chain.db.app_hash == fresh_root(chain)
    assert chain.db.get(STATE_TREE) == {"spec": proofs.PROOF_TYPE, "since": 0, "events_since": 1}
    for key in [*chain.state(), f"accounts/{people[5].account}", "members/nobody", "bank/balance/nobody"]:
        assert checked(chain.app, key) == (chain.state()[key].encode() if key in chain.state() else None)


def test_a_restart_and_a_replay_find_the_same_roots(tmp_path):
    association = Identity.generate("association")
    people = [Identity.generate(f"m{i}") for i in range(6)]
    live = Harness(tmp_path / "live.sqlite", association, balances={people[0].account: 100})
    hashes = []
    blocks = grow(live, people)
    for txs in blocks:
        live.block(*txs)
        hashes.append(live.db.app_hash)
    # a restart: a new app on the same database reports the same root and goes on from it
    live.app = RdxApp(Database(tmp_path / "live.sqlite"), chainsim.CHAIN)
    assert live.app.info(abci.RequestInfo()).last_block_app_hash == hashes[-1]
    extra = live.tx(people[1], "bank.Transfer", {"to": people[2].account, "amount": 1})
    live.block(extra)
    assert live.db.app_hash == fresh_root(live)
    # a replay from genesis on an empty database, FinalizeBlock alone
    replay = Harness(tmp_path / "replay.sqlite", association, balances={people[0].account: 100})
    for txs, expected in zip([*blocks, [extra]], [*hashes, live.db.app_hash]):
        replay.block(*txs)
        assert replay.db.app_hash == expected


def test_a_chain_made_before_the_tree_keeps_its_hash_chain_until_its_upgrade_then_migrates(tmp_path):
    seat = Identity.generate("association.board-s0")
    people = [Identity.generate(f"m{i}") for i in range(4)]
    chain = Harness(tmp_path / "old.sqlite", Identity.generate("association"), board=[seat],
                    balances={people[0].account: 50}, without=("state_tree",), app_class=NextRelease)
    chain.block(*[register(chain, p, ("consumer",)) for p in people])
    chain.block(chain.tx(people[0], "bank.Transfer", {"to": people[1].account, "amount": 5}))
    assert chain.db.get(STATE_TREE) is None and len(chain.db.app_hash) == 32
    assert chain.db.app_hash != fresh_root(chain)  # still the hash chain...
    refused = prove(chain.app, f"accounts/{people[0].account}")  # ...so nothing can be proven yet
    assert refused.code == Code.INVALID_QUERY and "not a state tree yet" in refused.log
    assert not refused.proof_ops.ops
    at = chain.height + 3
    [scheduled] = chain.block(chain.tx(seat, "board.Propose", {"id": "p-tree", "action": {
        "type": "governance.ScheduleUpgrade", "payload": {"name": "state-tree", "height": at, "app_version": 2}}}))
    assert scheduled.code == Code.OK, scheduled.log
    while chain.height < at - 1:
        chain.block()
        assert chain.db.get(STATE_TREE) is None
    chain.block()  # the upgrade's height: one pass over the whole state
    assert chain.height == at and chain.db.get(STATE_TREE) == {"spec": proofs.PROOF_TYPE, "since": at,
                                                               "events_since": at + 1}
    assert chain.db.app_hash == chain.last_response.app_hash == fresh_root(chain)
    assert not any(k.startswith("events/") for k in chain.state())  # the old chain's blocks keep their hashes
    chain.block(chain.tx(people[1], "bank.Transfer", {"to": people[2].account, "amount": 2}))
    assert chain.db.app_hash == fresh_root(chain)  # and incremental from there
    assert checked(chain.app, f"events/{chain.height:012d}") is not None  # events are state from the next block
    assert checked(chain.app, f"bank/balance/{people[2].account}") == b"2"
    assert checked(chain.app, f"bank/balance/{people[3].account}") is None


def test_each_blocks_events_are_committed_in_state_as_its_results_record_them_and_proven(tmp_path):
    people = [Identity.generate(f"m{i}") for i in range(3)]
    chain = Harness(tmp_path / "e.sqlite", Identity.generate("association"), balances={people[0].account: 9})
    results = chain.block(*[register(chain, p, ("consumer",)) for p in people])
    in_results = {}
    for e in [*chain.last_response.events, *(e for r in results for e in r.events)]:
        attrs = {a.key: a.value for a in e.attributes}
        in_results[attrs["id"]] = [e.type, attrs["entity"], attrs["digest"]]
    assert len(in_results) >= 4  # the genesis events and a registration each
    assert json.loads(checked(chain.app, f"events/{chain.height:012d}")) == in_results
    before = chain.db.app_hash
    chain.block()  # a block without events writes no record and keeps the app hash
    assert chain.db.app_hash == before
    assert checked(chain.app, f"events/{chain.height:012d}") is None


def test_a_proof_at_the_height_before_the_latest_proves_that_state_against_its_app_hash(tmp_path):
    people = [Identity.generate(f"m{i}") for i in range(3)]
    chain = Harness(tmp_path / "b.sqlite", Identity.generate("association"), balances={people[0].account: 50})
    chain.block(*[register(chain, p, ("consumer",)) for p in people[:2]])
    chain.block()
    root_before, at = chain.db.app_hash, chain.db.height
    chain.block(chain.tx(people[0], "bank.Transfer", {"to": people[1].account, "amount": 5}),
                register(chain, people[2], ("consumer",)))
    assert chain.db.app_hash != root_before

    def proven_before(key: str) -> bytes | None:
        answer = prove(chain.app, key, height=at)
        assert answer.code in (Code.OK, Code.NOT_FOUND) and answer.height == at, answer.log
        value = answer.value if answer.code == Code.OK else None
        proofs.verify(root_before, key, value, answer.proof_ops)  # the root the next header carries
        return value

    assert proven_before(f"bank/balance/{people[0].account}") == b"50"  # written by the latest block: its old value
    hint = f"changed at height {chain.db.height}"  # ...and a hint that a reader wanting the latest must wait
    assert prove(chain.app, f"bank/balance/{people[0].account}", height=at).info == hint
    assert prove(chain.app, f"members/{people[2].account}", height=at).info == hint
    assert prove(chain.app, f"members/{people[1].account}", height=at).info == ""
    assert proven_before(f"bank/balance/{people[1].account}") is None
    assert proven_before(f"members/{people[2].account}") is None  # made by the latest block: absent before it
    assert json.loads(proven_before(f"members/{people[1].account}"))["id"] == people[1].account  # not written since
    with pytest.raises(proofs.ProofError):  # and not provable against the latest root
        proofs.verify(chain.db.app_hash, f"bank/balance/{people[0].account}", b"50",
                      prove(chain.app, f"bank/balance/{people[0].account}", height=at).proof_ops)
    for height in (at - 1, chain.db.height + 1):
        assert prove(chain.app, "bank/supply", height=height).code == Code.INVALID_QUERY
    restarted = RdxApp(Database(tmp_path / "b.sqlite"), chainsim.CHAIN)  # keeps no old values: latest only
    assert restarted.query(abci.RequestQuery(path="/bank/supply", prove=True, height=at)).code == Code.INVALID_QUERY


@pytest.mark.parametrize("path, height, code", [
    ("", 0, Code.INVALID_QUERY), ("/", 0, Code.INVALID_QUERY), ("/accounts/", 0, Code.INVALID_QUERY),
    ("/accounts/?limit=5", 0, Code.NOT_FOUND), ("/quote/x/1", 0, Code.INVALID_QUERY),
    ("/" + "a" * 600, 0, Code.INVALID_QUERY), ("/members/association", 1, Code.INVALID_QUERY),
    ("/members/association", -1, Code.INVALID_QUERY), ("/members/association", 10**12, Code.INVALID_QUERY),
    ("/\x00", 0, Code.NOT_FOUND), ("//members/association", 0, Code.OK), ("/members/association\n", 0, Code.NOT_FOUND),
    ("/\ufffe\U0010ffff", 0, Code.NOT_FOUND),
])
def test_hostile_paths_with_prove_get_a_code_and_any_proof_given_verifies(tmp_path, path, height, code):
    chain = Harness(tmp_path / "h.sqlite", Identity.generate("association"))
    for _ in range(3):  # height 1 is then two before the latest: refused
        chain.block()
    answer = chain.app.query(abci.RequestQuery(path=path, prove=True, height=height))
    assert answer.code == code, answer.log
    assert answer.height == chain.db.height
    if code in (Code.OK, Code.NOT_FOUND):
        key = path.lstrip("/")
        proofs.verify(chain.db.app_hash, key, answer.value if code == Code.OK else None, answer.proof_ops)
    else:
        assert not answer.proof_ops.ops and not answer.value


def test_a_proposal_that_is_not_committed_leaves_nothing_behind_and_a_cold_node_reads_every_proof(tmp_path):
    from google.protobuf.timestamp_pb2 import Timestamp

    people = [Identity.generate(f"m{i}") for i in range(8)]
    chain = Harness(tmp_path / "p.sqlite", Identity.generate("association"), balances={people[0].account: 100})
    chain.block(*[register(chain, p, ("consumer",)) for p in people[:4]])
    # A proposal for the next height, executed (its tree nodes made) but not the block decided.
    rejected = [register(chain, p, ("consumer",)) for p in people[4:]]
    at = {"height": chain.height + 1, "time": Timestamp(seconds=chain.t0 + (chain.height + 1) * 10)}
    chain.app.process_proposal(abci.RequestProcessProposal(txs=rejected, **at))
    chain.nonces[chain.association.account] -= len(rejected)
    decided = chain.tx(people[0], "bank.Transfer", {"to": people[1].account, "amount": 3})
    chain.block(decided)
    for _ in range(3):
        chain.block(chain.tx(people[1], "bank.Transfer", {"to": people[2].account, "amount": 1}))
        assert chain.db.app_hash == fresh_root(chain)
    cold = RdxApp(Database(tmp_path / "p.sqlite"), chainsim.CHAIN)
    for key in [*chain.state(), f"members/{people[6].account}"]:
        assert checked(cold, key) == (chain.state()[key].encode() if key in chain.state() else None)
