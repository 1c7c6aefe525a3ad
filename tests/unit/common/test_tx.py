from __future__ import annotations

import pytest

from services.common.identity import Identity, verify
from services.common.tx import ACCOUNT, MAX_TX_BYTES, Code, Tx, TxError, canonical


def test_signed_tx_round_trips_and_verifies():
    alice = Identity.generate("alice")
    tx = Tx.build(alice, "rdx-test", "members.RotateKey", 1, {"public_key": "k", "n": [1, {"b": 2, "a": None}]})
    decoded = Tx.decode(tx.encode())
    assert decoded == tx
    assert verify(alice.public_key, decoded.signing_bytes(), decoded.sig)
    assert not verify(Identity.generate("eve").public_key, decoded.signing_bytes(), decoded.sig)


def test_signature_covers_every_field():
    alice = Identity.generate("alice")
    tx = Tx.build(alice, "rdx-test", "members.RotateKey", 1, {"public_key": "k"})
    for change in ({"nonce": 2}, {"chain_id": "other"}, {"payload": {"public_key": "j"}}, {"type": "members.Suspend"}):
        forged = tx.model_copy(update=change)
        assert not verify(alice.public_key, forged.signing_bytes(), forged.sig)


def test_canonical_encoding_is_key_order_independent_and_refuses_floats():
    assert canonical({"b": 1, "a": [2, "é"]}) == canonical({"a": [2, "é"], "b": 1}) == '{"a":[2,"é"],"b":1}'.encode()
    with pytest.raises(TxError) as err:
        canonical({"amount": 1.5})
    assert err.value.code == Code.UNDECODABLE


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe", b"[]", b'{"chain_id": "x"}', b"null"])
def test_undecodable_bytes_are_rejected_with_code_1(raw):
    with pytest.raises(TxError) as err:
        Tx.decode(raw)
    assert err.value.code == Code.UNDECODABLE


def test_non_canonical_encoding_is_rejected():
    tx = Tx.build(Identity.generate("alice"), "rdx-test", "members.RotateKey", 1, {"public_key": "k"})
    spaced = tx.encode().replace(b",", b", ")
    with pytest.raises(TxError, match="canonically"):
        Tx.decode(spaced)


def test_oversize_tx_is_rejected_before_parsing():
    with pytest.raises(TxError) as err:
        Tx.decode(b"{" + b" " * MAX_TX_BYTES + b"}")
    assert err.value.code == Code.OVERSIZE


def test_identity_repr_and_file_keep_the_secret_private(tmp_path):
    alice = Identity.generate("alice")
    assert "secret" not in repr(alice)
    path = tmp_path / "alice.json"
    alice.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Identity.load(path).public_key == alice.public_key


def test_integers_are_bounded_to_what_every_signer_encodes_exactly():
    """A JavaScript signer's numbers are doubles: beyond 2^53 it would sign other bytes than it meant."""
    from services.common.tx import INT_MAX

    who = Identity.generate("bounded")
    for amount in (INT_MAX, -INT_MAX):
        assert Tx.decode(Tx.build(who, "c", "bank.Transfer", 1, {"amount": amount}).encode()).payload["amount"] == amount
    for amount in (INT_MAX + 1, -INT_MAX - 1, 2**63):
        raw = Tx.build(who, "c", "bank.Transfer", 1, {"amount": 1}).encode().replace(b'"amount":1', b'"amount":%d' % amount)
        with pytest.raises(TxError) as refused:
            Tx.decode(raw)
        assert refused.value.code == Code.UNDECODABLE and "2^53" in str(refused.value)


@pytest.mark.parametrize("signer, ok", [("bank", True), ("bank.node-1", True), ("a" * 64, True), ("0", True),
                                        ("", False), ("a" * 65, False), ("Bank", False), (".bank", False),
                                        ("-bank", False), ("bank/x", False), ("bank\n", False), ("bänk", False)])
def test_the_signer_pattern_is_the_one_account_pattern_everyone_checks(signer, ok):
    """A tx's signer, a gateway request's keyid and a key file's account are one pattern (tx.ACCOUNT):
    what the chain would refuse as a signer is refused at the gateway and in a key file too."""
    from pydantic import ValidationError

    from services.common import files
    from services.gateway import auth

    assert auth.ACCOUNT is files.ACCOUNT is ACCOUNT
    assert bool(ACCOUNT.fullmatch(signer)) is ok
    try:
        Tx(chain_id="c", type="bank.Transfer", signer=signer, nonce=1, payload={})
    except ValidationError:
        assert not ok
    else:
        assert ok
