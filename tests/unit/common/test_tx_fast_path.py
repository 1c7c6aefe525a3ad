"""Tx.decode reads a canonical tx with orjson and leaves everything else to the strict reader: the
two must accept the same bytes and refuse the same bytes with the same words, or validators that
differ only in which path a tx took would disagree."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import tx as txmod
from services.common.identity import Identity
from services.common.tx import Tx, TxError

IDENTITY = Identity.generate("alice")
GOOD = Tx.build(IDENTITY, "rdx-test", "members.RotateKey", 7, {"public_key": IDENTITY.public_key, "note": "é"}).encode()


def outcome(raw: bytes):
    try:
        return "ok", Tx.decode(raw)
    except TxError as exc:
        return exc.code, str(exc)


def strict_outcome(raw: bytes, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(txmod, "_canonical_value", lambda raw: None)
        return outcome(raw)


def test_a_canonical_tx_takes_the_fast_path_and_decodes_alike(monkeypatch):
    assert txmod._canonical_value(GOOD) is not None
    assert outcome(GOOD) == strict_outcome(GOOD, monkeypatch) and outcome(GOOD)[0] == "ok"


CASES = [
    GOOD.replace(b'"nonce":7', b'"nonce":7.0'),
    GOOD.replace(b'"nonce":7', b'"nonce":1.5'),
    GOOD.replace(b'"nonce":7', b'"nonce":-0'),
    GOOD.replace(b'"nonce":7', b'"nonce":1e5'),
    GOOD.replace(b'"nonce":7', b'"nonce":NaN'),
    GOOD.replace(b'"nonce":7', b'"nonce":' + str(2**64).encode()),
    GOOD.replace(b'"nonce":7', b'"nonce":' + str(2**53).encode()),
    GOOD.replace(b'"nonce":7', b'"nonce":7,"nonce":7'),
    GOOD.replace(b'"note":"\xc3\xa9"', b'"note":"\\u00e9"'),
    GOOD.replace(b'"note":"\xc3\xa9"', b'"note":"\\ud800"'),
    GOOD.replace(b'"note":"\xc3\xa9"', b'"note":' + b"[" * 20 + b"]" * 20),
    GOOD.replace(b'"note":"\xc3\xa9"', b'"note":' + b"[" * 5000 + b"]" * 5000),
    GOOD.replace(b'"note":"\xc3\xa9"', b'"note":1.5'),
    GOOD.replace(b'"note":"\xc3\xa9"', b'"note":"\xe9"'),
    GOOD.replace(b",", b", ", 1),
    b"[1,2]", b"7", b"", b"{}", b'{"a":1}',
]


@pytest.mark.parametrize("raw", CASES)
def test_hostile_variants_are_refused_alike_by_both_readers(raw, monkeypatch):
    assert outcome(raw) == strict_outcome(raw, monkeypatch)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8), st.integers(0, len(GOOD)), st.integers(0, 8))
def test_mutated_txs_are_decided_alike_by_both_readers(insert, at, cut):
    raw = GOOD[:at] + insert + GOOD[at + cut:]
    with pytest.MonkeyPatch.context() as m:
        fast = outcome(raw)
        m.setattr(txmod, "_canonical_value", lambda raw: None)
        strict = outcome(raw)
    assert fast == strict


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=6)
                    | st.floats(allow_nan=True),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=10))
def test_any_payload_value_is_decided_alike_by_both_readers(value):
    envelope = json.loads(GOOD)
    envelope["payload"]["note"] = value
    try:
        raw = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (UnicodeEncodeError, ValueError):
        return
    with pytest.MonkeyPatch.context() as m:
        fast = outcome(raw)
        m.setattr(txmod, "_canonical_value", lambda raw: None)
        strict = outcome(raw)
    assert fast == strict
