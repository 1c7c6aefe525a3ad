"""rdx_client's own signer (clients/python, written apart from services/common so a member system
installs it alone) against the spec's vectors, tests/vectors/signing.json (docs/signing.md), and
the servers' verifiers."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from rdx_client import EncodingError, Key, canonical, open_result, sign_request, sign_tx, tx_hash
from rdx_client.results import ResultError
from services.common import httpsig
from services.common.identity import Identity
from services.common.tx import Tx

VECTORS = json.loads((Path(__file__).parents[2] / "vectors" / "signing.json").read_text(encoding="utf-8"))


def key(name: str) -> Key:
    k = VECTORS["keys"][name]
    found = Key(k["account"], base64.b64decode(k["seed_b64"]))
    assert found.public_key == k["public_key_b64"]
    return found


@pytest.mark.parametrize("v", VECTORS["canonical"], ids=lambda v: v["name"])
def test_canonical_bytes(v):
    assert canonical(v["value"]) == v["canonical"].encode("utf-8")


@pytest.mark.parametrize("v", VECTORS["refused"], ids=lambda v: v["name"])
def test_values_the_encoding_refuses_are_refused_before_signing(v):
    with pytest.raises(EncodingError):
        canonical(json.loads(v["value_json"]))


def test_hostile_values_are_refused_without_recursion():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for bad in (deep, {"a": 2**53}, {"a": -(2**53)}, {"a": 1.0}, {"a": "\ud800"}, {1: "x"}, {"a": object()}):
        with pytest.raises(EncodingError):
            canonical(bad)


@pytest.mark.parametrize("v", VECTORS["txs"], ids=lambda v: v["name"])
def test_tx_envelopes_are_the_vectors_bytes_and_the_chain_decodes_them(v):
    u = v["unsigned"]
    envelope = sign_tx(key(v["key"]), u["chain_id"], u["type"], u["nonce"], u["payload"])
    assert envelope["sig"] == v["sig"]
    assert canonical(envelope) == v["encoded"].encode("utf-8")
    assert tx_hash(envelope) == v["hash"]
    assert Tx.decode(canonical(envelope)).hash == v["hash"]


@pytest.mark.parametrize("v", VECTORS["requests"], ids=lambda v: v["name"])
def test_signed_requests_are_the_vectors_headers_and_the_gateway_verifies_them(v):
    k, body = key(v["key"]), v["body"].encode("utf-8")
    created = datetime.datetime.fromtimestamp(v["created"], datetime.timezone.utc)
    headers = sign_request(k, v["method"], v["url"], body, created=created, nonce=v["nonce"], label=v["label"])
    assert headers == v["headers"]
    signature = headers["Signature"].removeprefix(f"{v['label']}=:").removesuffix(":")
    VerifyKey(base64.b64decode(k.public_key)).verify(v["signature_base"].encode("ascii"), base64.b64decode(signature))
    assert httpsig.verify(k.public_key, v["method"], v["url"], headers, body, max_age_s=10**10) == created


def test_key_files_are_the_servers_format_private_and_never_overwritten(tmp_path):
    made = Key.generate("bank-a")
    made.save(tmp_path / "k.json")
    assert (tmp_path / "k.json").stat().st_mode & 0o777 == 0o600
    assert Identity.load(tmp_path / "k.json").public_key == made.public_key == Key.load(tmp_path / "k.json").public_key
    assert "seed" not in repr(made) and base64.b64encode(made.seed).decode() not in repr(made)
    with pytest.raises(FileExistsError):
        made.save(tmp_path / "k.json")
    (tmp_path / "bad.json").write_text('{"account": "x", "secret_key": "not base64!"}')
    with pytest.raises(ValueError, match="not an rdx key file"):
        Key.load(tmp_path / "bad.json")


def test_a_sealed_result_opens_only_with_its_node_key_and_its_commitment():
    from services.compute.results import commit, seal

    node, other = Key.generate("bank.node"), Key.generate("telco.node")
    text = b'{"cardinality": 42}'
    commitment, salt = commit(text)
    sealed = base64.b64encode(seal(node.public_key, "j1", "psi_cardinality", text, salt, commitment,
                                   member="bank")).decode()
    opened = open_result(node, sealed)
    assert (opened.job, opened.member, opened.result, opened.commitment) == ("j1", "bank", {"cardinality": 42}, commitment)
    with pytest.raises(ResultError, match="not sealed to"):
        open_result(other, sealed)
    forged = seal(node.public_key, "j1", "psi", b'{"cardinality": 43}', salt, commitment, member="bank")
    with pytest.raises(ResultError, match="commitment"):
        open_result(node, forged)
    for junk in ("%%%", base64.b64encode(b"x" * 10).decode(), ""):
        with pytest.raises(ResultError):
            open_result(node, junk)
