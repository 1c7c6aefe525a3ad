"""The app's answers to hostile input, driven through its ABCI methods (no node): every class
of bad tx and query (tests/hostile.py) in CheckTx, in a proposal and in a decided block."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict
from chainsim import CHAIN, Harness, register
from google.protobuf.timestamp_pb2 import Timestamp
from hostile import hostile_query_paths, hostile_txs
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code, Tx
from services.consensus import app as app_module
from services.consensus.members import messages as members_messages

ACCEPT, REJECT = abci.ResponseProcessProposal.ACCEPT, abci.ResponseProcessProposal.REJECT


@pytest.fixture
def chain(tmp_path) -> Harness:
    h = Harness(tmp_path / "chain.sqlite", Identity.generate("association"))
    h.provider = Identity.generate("provider-a")
    h.block(register(h, h.provider))
    h.block(h.tx(h.provider, "assets.List", {
        "id": "a.listed", "level": "L2", "operations": ["psi"], "commitment": "ab" * 32,
        "price": {"model": "per_record", "amount": 3}, "metadata": example_metadata("Listed")}))
    assert h.last[0].code == Code.OK
    return h


def _next(h: Harness, who: Identity) -> int:
    return h.app.check_state.get(f"accounts/{who.account}")["nonce"] + 1


def _at(h: Harness, height_offset: int = 1) -> dict:
    return {"height": h.height + height_offset, "time": Timestamp(seconds=h.t0 + (h.height + height_offset) * 10)}


def test_each_hostile_tx_class_is_refused_by_checktx_with_its_code(chain):
    before = chain.state()
    for name, raw in hostile_txs(chain.provider, CHAIN, _next(chain, chain.provider)).items():
        resp = chain.check(raw)
        assert resp.code not in (Code.OK, app_module.INTERNAL_ERROR), (name, resp.code, resp.log)
        assert resp.log and len(resp.log) < 300, name
        assert "\ud800" not in resp.log and "kkkkkkkk" not in resp.log  # no payload echoed back
    assert chain.state() == before


def test_a_decided_block_of_hostile_txs_is_answered_tx_by_tx_and_changes_nothing(chain):
    """Before this was total, a lone surrogate made FinalizeBlock raise: a halt on every validator."""
    before = chain.state()
    txs = list(hostile_txs(chain.provider, CHAIN, _next(chain, chain.provider)).values())
    results = chain.block(*txs)
    assert len(results) == len(txs)
    assert all(r.code not in (Code.OK, app_module.INTERNAL_ERROR) for r in results)
    assert {k: v for k, v in chain.state().items() if not k.startswith("accounts/")} == \
        {k: v for k, v in before.items() if not k.startswith("accounts/")}


@pytest.mark.parametrize("name", list(hostile_txs(Identity.generate("x"), CHAIN, 1)))
def test_a_proposal_holding_any_hostile_tx_is_rejected_and_prepare_drops_it(chain, name):
    valid = chain.tx(chain.provider, "members.RotateKey", {"public_key": chain.provider.public_key})
    bad = hostile_txs(chain.provider, CHAIN, _next(chain, chain.provider) + 1)[name]
    at = _at(chain)
    assert chain.app.process_proposal(abci.RequestProcessProposal(txs=[valid], **at)).status == ACCEPT
    assert chain.app.process_proposal(abci.RequestProcessProposal(txs=[valid, bad], **at)).status == REJECT
    prepared = chain.app.prepare_proposal(abci.RequestPrepareProposal(txs=[bad, valid, bad], max_tx_bytes=1 << 22, **at))
    assert list(prepared.txs) == [valid]
    assert chain.app.process_proposal(abci.RequestProcessProposal(txs=prepared.txs, **at)).status == ACCEPT


def test_a_tx_made_invalid_earlier_in_the_same_block_is_dropped_not_proposed(chain):
    """Two txs with one nonce pass CheckTx on two validators; a proposal may hold only one."""
    first = chain.tx(chain.provider, "members.RotateKey", {"public_key": chain.provider.public_key})
    same_nonce = Tx.build(chain.provider, CHAIN, "assets.Delist", json.loads(first)["nonce"], {"id": "a.listed", "reason": "gone"}).encode()
    at = _at(chain)
    prepared = chain.app.prepare_proposal(abci.RequestPrepareProposal(txs=[first, same_nonce], max_tx_bytes=1 << 22, **at))
    assert list(prepared.txs) == [first]
    assert chain.app.process_proposal(abci.RequestProcessProposal(txs=[first, same_nonce], **at)).status == REJECT


def test_a_handler_rejection_is_admissible_in_a_block(chain):
    """A signed tx that its handler refuses (state changed since CheckTx) is a legitimate block
    entry: it fails with its code and spends its nonce."""
    delist_unknown = chain.tx(chain.provider, "assets.Delist", {"id": "no.such.asset", "reason": "gone"})
    at = _at(chain)
    assert chain.app.process_proposal(abci.RequestProcessProposal(txs=[delist_unknown], **at)).status == ACCEPT
    [result] = chain.block(delist_unknown)
    assert result.code not in (Code.OK, app_module.INTERNAL_ERROR)


def test_finalize_reuses_the_execution_of_the_accepted_proposal(chain, monkeypatch):
    valid = chain.tx(chain.provider, "members.RotateKey", {"public_key": chain.provider.public_key})
    at = _at(chain)
    assert chain.app.process_proposal(abci.RequestProcessProposal(txs=[valid], **at)).status == ACCEPT
    monkeypatch.setattr(chain.app, "_execute", lambda *a, **k: pytest.fail("executed twice"))
    final = chain.app.finalize_block(abci.RequestFinalizeBlock(txs=[valid], **at))
    assert [r.code for r in final.tx_results] == [Code.OK]
    chain.app.commit(abci.RequestCommit())
    # A different block at the same height (another round) executes afresh.
    assert chain.app._executions == {}


def test_app_hash_is_the_same_with_or_without_proposal_execution(tmp_path):
    association, bank = Identity.generate("association"), Identity.generate("bank-a")
    a, b = Harness(tmp_path / "a.sqlite", association), Harness(tmp_path / "b.sqlite", association)
    raw = register(a, bank)
    at = _at(a)
    a.app.process_proposal(abci.RequestProcessProposal(txs=[raw], **at))  # then FinalizeBlock reuses it
    a.block(raw)
    b.block(raw)  # FinalizeBlock alone, as in replay
    assert a.db.app_hash == b.db.app_hash and a.state() == b.state()


@pytest.mark.parametrize("name", list(hostile_query_paths("a.listed")))
def test_each_hostile_query_is_answered_with_a_code(chain, name):
    path = hostile_query_paths("a.listed")[name].replace("\ud800", "\ufffd")  # as CometBFT's JSON decoder passes it
    resp = chain.app.query(abci.RequestQuery(path=path))
    assert resp.code in (Code.NOT_FOUND, Code.INVALID_QUERY), (name, resp.code, resp.log)
    assert resp.log and not resp.value


def test_quote_takes_only_ascii_digits(chain):
    """'²'.isdigit() is True but int('²') raises: that query once halted the node."""
    def quote(path):
        return chain.app.query(abci.RequestQuery(path=path))
    assert json.loads(quote("/quote/a.listed/10").value) == 30
    assert quote("/quote/a.listed/\u00b2").code == Code.NOT_FOUND


def test_a_query_that_fails_inside_is_answered_not_raised(chain, monkeypatch):
    monkeypatch.setattr(chain.app.db, "get", lambda key: (_ for _ in ()).throw(RuntimeError("disk gone")))
    resp = chain.app.query(abci.RequestQuery(path="/members/provider-a"))
    assert resp.code == app_module.INTERNAL_ERROR and resp.log == "internal error"


def test_listing_queries_are_paged_with_a_cursor_and_bounded(chain):
    people = [Identity.generate(f"m{i:02d}") for i in range(7)]
    chain.block(*[register(chain, p) for p in people])
    seen, after = [], ""
    while True:
        path = "/members/?limit=3" + (f"&after={after}" if after else "")
        page = json.loads(chain.app.query(abci.RequestQuery(path=path)).value)
        assert len(page["items"]) <= 3
        seen += list(page["items"])
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == sorted(k for k in chain.state() if k.startswith("members/"))
    default = json.loads(chain.app.query(abci.RequestQuery(path="/members/")).value)
    assert len(default["items"]) == len(seen) and default["next"] is None


def test_a_page_stops_at_its_byte_bound(chain, monkeypatch):
    monkeypatch.setattr(app_module, "MAX_PAGE_BYTES", 300)
    chain.block(*[register(chain, Identity.generate(f"b{i}")) for i in range(5)])
    page = json.loads(chain.app.query(abci.RequestQuery(path="/members/?limit=1000")).value)
    assert 1 <= len(page["items"]) < 7 and page["next"] == list(page["items"])[-1]


def test_a_signer_may_hold_only_its_share_of_the_mempool(tmp_path):
    association = Identity.generate("association")
    h = Harness(tmp_path / "c.sqlite", association)
    member = Identity.generate("busy")
    h.block(register(h, member))
    h.app._params = h.app._params.model_copy(update={"max_pending_txs_per_signer": 3})  # as governance would set
    rotate = {"public_key": member.public_key}
    assert [h.check(h.tx(member, "members.RotateKey", rotate)).code for _ in range(3)] == [Code.OK] * 3
    full = h.check(h.tx(member, "members.RotateKey", rotate))
    assert full.code == Code.MEMPOOL_SHARE_FULL and "busy" in full.log
    # Another signer is not affected; after a block the share frees up.
    assert h.check(register(h, Identity.generate("other"))).code == Code.OK


def test_a_signer_may_hold_only_its_bytes_of_the_mempool(tmp_path):
    h = Harness(tmp_path / "c.sqlite", Identity.generate("association"))
    member = Identity.generate("bulky")
    h.block(register(h, member))
    h.app._params = h.app._params.model_copy(update={"max_pending_bytes_per_signer": 64 << 10})
    codes = []
    for i in range(40):
        codes.append(h.check(h.tx(member, "assets.List", {
            "id": f"bulk.{i}", "level": "L1", "operations": ["psi"], "commitment": "ab" * 32,
            "price": {"model": "fixed", "amount": 1}, "metadata": example_metadata("x" * 10, description="d" * 3000)
        })).code)
    admitted = codes.index(Code.MEMPOOL_SHARE_FULL)  # (the harness's later nonces then run ahead)
    assert admitted >= 1 and codes[:admitted] == [Code.OK] * admitted
    assert admitted * 3_000 < 64 << 10 < (admitted + 1) * 4_500


def test_junk_costs_no_memory_only_verified_txs_are_cached(chain):
    impostor = Identity(chain.provider.account, Identity.generate("impostor").signing_key)
    cached = len(chain.app._verified)  # the fixture's own valid txs
    for i in range(50):
        chain.check(Tx.build(impostor, CHAIN, "members.RotateKey", 10 + i, {"public_key": "x" * 1000}).encode())
    assert len(chain.app._verified) == cached
    assert chain.check(chain.tx(chain.provider, "members.RotateKey", {"public_key": chain.provider.public_key})).code == Code.OK
    assert len(chain.app._verified) == cached + 1


def test_an_immutable_payload_is_validated_once_per_tx_bytes_and_never_for_other_bytes(chain, monkeypatch):
    """A recheck and a block reuse the payload model validated at CheckTx, keyed on the tx's exact
    bytes: the same payload in another tx (here the next nonce) is validated on its own."""
    nonce = _next(chain, chain.provider)
    first, second = (Tx.build(chain.provider, CHAIN, "members.RotateKey", n, {"public_key": chain.provider.public_key})
                     .encode() for n in (nonce, nonce + 1))
    assert chain.check(first).code == Code.OK
    assert chain.app._verified.get(first).payload is not None

    def refuse(*args, **kwargs):
        raise AssertionError("validated again")

    monkeypatch.setattr(members_messages.RotateKey, "model_validate", refuse)
    assert chain.check(second).code == app_module.INTERNAL_ERROR  # not served from first's entry
    assert chain.block(first)[0].code == Code.OK


def test_a_payload_a_handler_could_mutate_is_validated_afresh_each_time(chain):
    """A model holding a list or dict (members.Register's roles, a board proposal's action) is not
    kept: a handler that changed it would change every later execution of the same bytes."""
    member = Identity.generate("listy")
    raw = register(chain, member)
    assert chain.check(raw).code == Code.OK
    assert chain.app._verified.get(raw).payload is None
    assert {"members.Register", "board.Propose", "members.Delegate"}.isdisjoint(app_module.SHARED_PAYLOADS)

    class Inner(BaseModel):
        model_config = ConfigDict(frozen=True)
        tags: tuple[str, ...] | list[str]

    class Outer(BaseModel):
        model_config = ConfigDict(frozen=True)
        name: str
        inner: Inner | None

    assert not app_module._immutable(Outer)
    assert app_module._immutable(members_messages.RotateKey)


def test_a_rotated_key_is_checked_again_despite_the_cache(chain):
    """The cache remembers which key verified a tx: once the key is rotated, a pending tx signed
    with the retired key fails at recheck although its bytes were verified before."""
    old = chain.provider
    new = Identity(old.account, Identity.generate("new").signing_key)
    nonce = _next(chain, old)
    harmless = Tx.build(old, CHAIN, "members.RotateKey", nonce, {"public_key": old.public_key}).encode()
    pending = Tx.build(old, CHAIN, "assets.Delist", nonce + 1, {"id": "a.listed", "reason": "gone"}).encode()
    assert chain.check(harmless).code == Code.OK
    assert chain.check(pending).code == Code.OK
    assert pending in chain.app._verified
    # Another validator's proposal holds a rotation at that nonce instead of the harmless tx.
    rotate = Tx.build(old, CHAIN, "members.RotateKey", nonce, {"public_key": new.public_key}).encode()
    chain.block(rotate)
    assert chain.last[0].code == Code.OK
    assert chain.check(pending).code == Code.BAD_SIGNATURE  # the recheck after the block
