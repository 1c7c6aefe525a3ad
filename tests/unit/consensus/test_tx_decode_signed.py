"""The app authenticates a tx with ``Tx.decode_signed``: the tx and its signing bytes from one
decoding, without serialising it twice more. Validators that take it and validators that take
``decode`` + ``signing_bytes_of_decoded`` (the strict reader, or an older binary) must accept and
refuse the same bytes with the same words and verify the same signing bytes, or they disagree."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import identity
from services.common import tx as txmod
from services.common.identity import Identity
from services.common.tx import INT_MAX, INT_MIN, MAX_DEPTH, Code, Tx, TxError

IDENTITY = Identity.generate("alice")
GOOD = json.loads(Tx.build(IDENTITY, "rdx-test", "members.RotateKey", 7, {"public_key": IDENTITY.public_key}).encode())
TRACE = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"


def reference_check_values(value):
    """_check_values as it was before its fast path (the isinstance chain alone)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise TxError(Code.UNDECODABLE, f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, float):
            raise TxError(Code.UNDECODABLE, "floats are not allowed in transactions; use integers")
        elif isinstance(v, int) and not isinstance(v, bool) and not INT_MIN <= v <= INT_MAX:
            raise TxError(Code.UNDECODABLE, "an integer is outside +-(2^53 - 1), the range every signer can encode")


def outcome(call, *args):
    try:
        return "ok", call(*args)
    except TxError as exc:
        return exc.code, str(exc)


def old_way(raw: bytes):
    tx = Tx.decode(raw)
    return tx, tx.signing_bytes_of_decoded()


def both_paths(raw: bytes):
    new = outcome(Tx.decode_signed, raw)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(txmod, "_canonical_value", lambda raw: None)  # the strict reader, which re-serialises
        strict = outcome(old_way, raw)
    return new, strict


VALUES = st.recursive(st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text(max_size=6)
                      | st.floats(allow_nan=False),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                      max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_check_values_reports_what_the_isinstance_chain_reported(value):
    assert outcome(txmod._check_values, value) == outcome(reference_check_values, value)


@settings(max_examples=300, deadline=None)
@given(payload_value=VALUES,
       drop=st.sampled_from([None, "sig", "chain_id", "nonce", "payload"]),
       trace=st.sampled_from(["absent", None, TRACE, "not-a-traceparent"]),
       extra=st.booleans())
def test_decode_signed_decides_and_signs_as_decode_then_signing_bytes(payload_value, drop, trace, extra):
    envelope = json.loads(json.dumps(GOOD))
    envelope["payload"]["note"] = payload_value
    if drop:
        del envelope[drop]
    if trace != "absent":
        envelope["trace"] = trace
    if extra:
        envelope["zzz"] = 1
    raw = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    new, strict = both_paths(raw)
    assert new == strict
    if new[0] == "ok":
        tx, signing = new[1]
        assert signing == tx.signing_bytes() and tx.encode() == raw


def test_a_well_formed_tx_takes_the_fast_path_and_its_signature_verifies():
    raw = json.dumps(GOOD, sort_keys=True, separators=(",", ":")).encode()
    tx, fields = Tx._decode(raw)
    assert fields is not None  # no second serialisation
    tx, signing = Tx.decode_signed(raw)
    assert identity.verify(IDENTITY.public_key, signing, tx.sig)
    assert not identity.verify(IDENTITY.public_key, signing.replace(b'"nonce":7', b'"nonce":8'), tx.sig)


@pytest.mark.parametrize("raw", [
    json.dumps({**GOOD, "trace": None}, sort_keys=True, separators=(",", ":")).encode(),  # trace null: not canonical
    json.dumps({k: v for k, v in GOOD.items() if k != "sig"}, sort_keys=True, separators=(",", ":")).encode(),
])
def test_a_default_filled_in_is_still_refused_as_not_canonical(raw):
    new, strict = both_paths(raw)
    assert new == strict == (Code.UNDECODABLE, "transaction is not canonically encoded")
