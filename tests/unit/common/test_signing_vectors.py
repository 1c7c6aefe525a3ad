"""tests/vectors/signing.json (docs/signing.md) against the Python reference: services/common/tx.py
for tx envelopes and services/common/httpsig.py for signed requests. The TypeScript signer in
sdk/typescript must reproduce the same file (tests/unit/sdk/test_typescript_signer.py)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from unittest import mock

import pytest
from nacl.signing import SigningKey, VerifyKey

from services.common import httpsig
from services.common.identity import Identity
from services.common.tx import Code, Tx, TxError, canonical

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "signing.json").read_text(encoding="utf-8"))


def key(name: str) -> Identity:
    k = VECTORS["keys"][name]
    ident = Identity(k["account"], SigningKey(base64.b64decode(k["seed_b64"])))
    assert ident.public_key == k["public_key_b64"]
    return ident


def test_the_file_has_every_kind_of_vector():
    assert {k: len(v) for k, v in VECTORS.items() if isinstance(v, list)} == {
        "canonical": 6, "refused": 5, "decode_refused": 10, "txs": 3, "requests": 3}


@pytest.mark.parametrize("v", VECTORS["canonical"], ids=lambda v: v["name"])
def test_canonical_bytes(v):
    raw = canonical(v["value"])
    assert raw == base64.b64decode(v["canonical_b64"]) == v["canonical"].encode("utf-8")
    assert json.loads(raw) == v["value"]


@pytest.mark.parametrize("v", VECTORS["refused"], ids=lambda v: v["name"])
def test_values_the_encoding_refuses(v):
    with pytest.raises(TxError) as refused:
        canonical(json.loads(v["value_json"]))
    assert refused.value.code == Code.UNDECODABLE


@pytest.mark.parametrize("v", VECTORS["decode_refused"], ids=lambda v: v["name"])
def test_tx_bytes_the_chain_refuses(v):
    with pytest.raises(TxError) as refused:
        Tx.decode(v["tx"].encode("utf-8"))
    assert refused.value.code == Code.UNDECODABLE


@pytest.mark.parametrize("v", VECTORS["txs"], ids=lambda v: v["name"])
def test_tx_envelopes(v):
    ident, u = key(v["key"]), v["unsigned"]
    tx = Tx.build(ident, u["chain_id"], u["type"], u["nonce"], u["payload"])
    assert tx.signing_bytes() == v["signing_bytes"].encode("utf-8")
    assert tx.sig == v["sig"]
    assert tx.encode() == v["encoded"].encode("utf-8") == base64.b64decode(v["encoded_b64"])
    assert tx.hash == v["hash"] == hashlib.sha256(tx.encode()).hexdigest().upper()
    # what the chain does with these bytes: decode, then check the signature over the envelope less sig
    decoded = Tx.decode(base64.b64decode(v["encoded_b64"]))
    VerifyKey(base64.b64decode(VECTORS["keys"][v["key"]]["public_key_b64"])).verify(
        decoded.signing_bytes_of_decoded(), base64.b64decode(decoded.sig))


@pytest.mark.parametrize("v", VECTORS["requests"], ids=lambda v: v["name"])
def test_signed_requests(v):
    ident, body = key(v["key"]), v["body"].encode("utf-8")
    created = datetime.datetime.fromtimestamp(v["created"], datetime.timezone.utc)
    with mock.patch.object(httpsig.secrets, "token_urlsafe", return_value=v["nonce"]), \
         mock.patch.object(httpsig.HTTPMessageSigner, "DEFAULT_SIGNATURE_LABEL", v["label"]):
        assert httpsig.sign(ident, v["method"], v["url"], body, created=created) == v["headers"]
    h = v["headers"]
    assert h["Content-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"
    # the signature is Ed25519 over the signature base the spec spells out, independent of the library
    signature = h["Signature"].removeprefix(f"{v['label']}=:").removesuffix(":")
    VerifyKey(base64.b64decode(ident.public_key)).verify(v["signature_base"].encode("ascii"), base64.b64decode(signature))
    # and the gateway's own verifier accepts it (any age here: the vectors' created is fixed)
    assert httpsig.verify(ident.public_key, v["method"], v["url"], h, body, max_age_s=10**10) == created
    with pytest.raises(httpsig.SignatureError):
        httpsig.verify(ident.public_key, v["method"], v["url"], h, body + b" ", max_age_s=10**10)
