"""The chain keeps every published policy version (``policy/versions/<version>``), written by the
publish handler only: the genesis writes none, the first publication keeps the version it replaces
and the new one, each later publication one new key; a refused publication writes nothing, and two
chains given the same blocks hold the same versions (and app hash)."""

from __future__ import annotations

import json

import pytest
from chainsim import Harness, register

from services.common.identity import Identity
from services.common.policy import DEFAULT_POLICY_TEXT, digest
from services.common.tx import Code
from services.consensus.governance.powers import DEFAULT_POWERS

pytestmark = pytest.mark.unit


def versions(h: Harness) -> dict[str, dict]:
    return {k: json.loads(v) for k, v in h.state().items() if k.startswith("policy/versions/")}


def publish(h: Harness, version: int, text: str) -> tuple[int, str]:
    [r] = h.block(h.tx(h.association, "governance.PublishPolicy", {"version": version, "text": text}))
    return r.code, r.log


def test_each_publication_is_kept_and_nothing_else_writes_a_version(tmp_path):
    h = Harness(tmp_path / "chain.sqlite", Identity.generate("association"))
    h.block()
    assert versions(h) == {}  # the genesis: policy/current only, as before
    v2 = DEFAULT_POLICY_TEXT + "\n// v2\n"
    assert publish(h, 2, v2) == (Code.OK, "")
    kept = versions(h)
    assert sorted(kept) == ["policy/versions/000000000001", "policy/versions/000000000002"]
    assert kept["policy/versions/000000000001"] == {"version": 1, "text": DEFAULT_POLICY_TEXT,
                                                    "sha256": digest(DEFAULT_POLICY_TEXT), "height": 0}
    assert kept["policy/versions/000000000002"] == {"version": 2, "text": v2, "sha256": digest(v2), "height": h.height}
    assert kept["policy/versions/000000000002"] == json.loads(h.state()["policy/current"])
    before = h.state()
    assert publish(h, 2, v2 + "// again\n")[0] == Code.CONFLICT  # refused: not the next version
    assert publish(h, 3, "this is not cedar")[0] == Code.INVALID_PAYLOAD
    after = h.state()
    assert {k: v for k, v in after.items() if k.startswith("policy/")} == \
        {k: v for k, v in before.items() if k.startswith("policy/")}
    v3 = v2 + "// v3\n"
    state = h.state()
    assert publish(h, 3, v3)[0] == Code.OK
    new = {k for k in h.state() if k.startswith("policy/")} - {k for k in state if k.startswith("policy/")}
    assert new == {"policy/versions/000000000003"}  # one new key; the earlier versions unchanged
    assert {k: v for k, v in versions(h).items() if k != "policy/versions/000000000003"} == kept


def test_a_replayed_chain_keeps_the_same_versions_and_app_hash(tmp_path):
    assoc = Identity.generate("association")
    a, b = Harness(tmp_path / "a.sqlite", assoc), Harness(tmp_path / "b.sqlite", assoc)
    texts = [DEFAULT_POLICY_TEXT + f"\n// v{v}\n" for v in (2, 3)]
    for h in (a, b):
        h.block()
        for version, text in zip((2, 3), texts):
            assert publish(h, version, text)[0] == Code.OK
    assert versions(a) == versions(b) and len(versions(a)) == 3
    assert a.app.db.app_hash == b.app.db.app_hash


def test_a_version_published_by_the_board_is_kept_too(tmp_path):
    assoc, seats = Identity.generate("association"), [Identity.generate(f"association.board-s{i}") for i in range(2)]
    h = Harness(tmp_path / "chain.sqlite", assoc, board=seats, threshold=2, powers=dict(DEFAULT_POWERS))
    h.block()
    text = DEFAULT_POLICY_TEXT + "\n// by the board\n"
    code, log = publish(h, 2, text)
    assert code == Code.UNAUTHORIZED and versions(h) == {}  # the officer may not: the board holds the power
    propose = {"id": "p-policy", "action": {"type": "governance.PublishPolicy", "payload": {"version": 2, "text": text}}}
    assert [r.code for r in h.block(h.tx(seats[0], "board.Propose", propose))] == [Code.OK]
    assert versions(h) == {}
    assert [r.code for r in h.block(h.tx(seats[1], "board.Approve", {"id": "p-policy"}))] == [Code.OK]
    assert sorted(versions(h)) == ["policy/versions/000000000001", "policy/versions/000000000002"]
    assert versions(h)["policy/versions/000000000002"]["text"] == text


def test_a_policy_text_that_would_crash_cedars_parser_is_refused_and_the_chain_goes_on(tmp_path):
    """Nested 2,000 deep, the text killed the process in cedarpy's parser (SIGSEGV): on a chain that
    is every validator, at CheckTx and again at every replay of the block."""
    h = Harness(tmp_path / "chain.sqlite", Identity.generate("association"))
    h.block()
    before = {k: v for k, v in h.state().items() if k.startswith("policy/")}
    deep = "permit (principal, action, resource) when { " + "(" * 2000 + "true" + ")" * 2000 + " };"
    assert h.check(h.tx(h.association, "governance.PublishPolicy", {"version": 2, "text": deep})).code \
        == Code.INVALID_PAYLOAD
    h.nonces[h.association.account] -= 1  # the refused CheckTx spent no nonce
    code, log = publish(h, 2, deep)
    assert code == Code.INVALID_PAYLOAD and "deeper than 64" in log
    assert {k: v for k, v in h.state().items() if k.startswith("policy/")} == before
    assert publish(h, 2, DEFAULT_POLICY_TEXT + "\n// v2\n")[0] == Code.OK


def test_a_member_sending_a_crashing_policy_text_is_refused_as_unauthorized(tmp_path):
    """A member that is not the association reaches neither the handler nor Cedar's parser."""
    h = Harness(tmp_path / "chain.sqlite", Identity.generate("association"))
    bank = Identity.generate("bank")
    assert [r.code for r in h.block(register(h, bank))] == [Code.OK]
    deep = "permit (principal, action, resource) when { " + "[" * 2000 + "1" + "]" * 2000 + " == [1] };"
    assert h.check(h.tx(bank, "governance.PublishPolicy", {"version": 2, "text": deep})).code == Code.UNAUTHORIZED
    h.nonces[bank.account] -= 1
    [r] = h.block(h.tx(bank, "governance.PublishPolicy", {"version": 2, "text": deep}))
    assert r.code == Code.UNAUTHORIZED and json.loads(h.state()["policy/current"])["version"] == 1
