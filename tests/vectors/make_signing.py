"""Writes tests/vectors/signing.json from the Python reference (services/common/tx.py and
httpsig.py): `python -m tests.vectors.make_signing`. Run it only when the spec changes on
purpose; tests/unit/common/test_signing_vectors.py checks the file against the code, and the
TypeScript signer (sdk/typescript) must reproduce it byte for byte. docs/signing.md explains it."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit
from unittest import mock

from nacl.signing import SigningKey

from services.common import httpsig
from services.common.identity import Identity
from services.common.tx import Tx, canonical

OUT = Path(__file__).with_name("signing.json")

# TEST-ONLY keys: fixed, published seeds. Anyone can sign with them; never register them on a real chain.
SEEDS = {"bank": ("bank-a", bytes(range(32))), "telco": ("telco-b.node", hashlib.sha256(b"rdx test vector telco").digest())}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key(name: str) -> Identity:
    account, seed = SEEDS[name]
    return Identity(account, SigningKey(seed))


CANONICAL = [
    ("empty object", {}),
    ("keys sorted by code point, not by UTF-16 unit", {"b": 1, "a": 2, "\U0001F600": 3, "\uff61": 4, "Z": 5, "aa": 6, "": 7}),
    ("no whitespace, nested", {"list": [1, [2, [3, {}]], []], "obj": {"y": None, "x": True, "w": False}}),
    ("UTF-8, not \\u escapes; only the JSON escapes", {"text": "Zürich – 東京 😀 \"q\" \\ \n\t\r\b\f \u0001 \u001f \u007f \u2028"}),
    ("integer bounds", {"max": 2**53 - 1, "min": -(2**53 - 1), "zero": 0, "neg": -42}),
    ("nesting of exactly 16 levels", {"a": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}),
]

REFUSED = [
    ("a float", {"amount": 1.5}),
    ("an integer above 2^53 - 1", {"amount": 2**53}),
    ("an integer below -(2^53 - 1)", {"amount": -(2**53)}),
    ("nesting of 17 levels", {"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}),
    ("a lone surrogate", {"text": "\ud800"}),
]

GOOD_TX = '{"chain_id":"rdx-local","nonce":1,"payload":{},"sig":"","signer":"bank-a","type":"access.Request"}'
DECODE_REFUSED = [  # raw tx bytes the chain's decoder refuses (code 1) before looking at the signature
    ("whitespace", GOOD_TX.replace(",", ", ")),
    ("keys not sorted", GOOD_TX.replace('"chain_id":"rdx-local","nonce":1', '"nonce":1,"chain_id":"rdx-local"')),
    ("a repeated key", GOOD_TX.replace('"payload":{}', '"payload":{"a":1,"a":1}')),
    ("a float written as 1.0", GOOD_TX.replace('"payload":{}', '"payload":{"a":1.0}')),
    ("an exponent", GOOD_TX.replace('"payload":{}', '"payload":{"a":1e3}')),
    ("an integer above 2^53 - 1", GOOD_TX.replace('"payload":{}', '"payload":{"a":9007199254740992}')),
    ("NaN", GOOD_TX.replace('"payload":{}', '"payload":{"a":NaN}')),
    ("\\u escape where UTF-8 is canonical", GOOD_TX.replace('"payload":{}', '"payload":{"a":"\\u00fc"}')),
    ("an unknown envelope field", GOOD_TX.replace('"chain_id"', '"extra":1,"chain_id"')),
    ("a missing field", GOOD_TX.replace('"nonce":1,', '')),
]

TXS = [
    ("a consumer's access request", "access.Request", "bank", "rdx-local", 7, {
        "id": "grant-1", "asset": "telco-b.subscribers", "operations": ["psi"], "purpose": "joint marketing – Zürich",
        "expires_at": 1798761600, "max_runs": 5}),
    ("a job with the largest amount rdx defines", "jobs.Submit", "bank", "rdx-local", 8, {
        "id": "job-1", "type": "psi", "inputs": [{"asset": "telco-b.subscribers", "grant": "grant-1"}],
        "max_price": 1_000_000_000_000_000, "params": {}, "timeout_s": 600}),
    ("a node signer, another chain, the least integer", "jobs.Report", "telco", "rdx-test", 1, {"id": "job-1", "n": -(2**53 - 1)}),
]

REQUESTS = [
    ("POST with a JSON body", "bank", "POST", "http://127.0.0.1:8000/v1/tx", b'{"tx":{"a":1}}', 1767225600,
     "bHVja3ktbm9uY2Ux", "pyhms"),
    ("GET: empty body, still digested; query string", "bank", "GET",
     "http://127.0.0.1:8000/v1/access-requests?status=granted", b"", 1767225601, "n2", "pyhms"),
    ("a node key, another label, DELETE over https", "telco", "DELETE",
     "https://gw.example/v1/keys/k_1", b"", 1767225602, "n-3_", "sig1"),
]


def target_uri(url: str) -> str:
    """RFC 9421 @target-uri as the gateway's verifier derives it: the URL as sent (the gateway
    rebuilds it from its scheme, the Host header, the path and the query), an empty path as "/"."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")


def signature_base(method: str, url: str, headers: dict[str, str], label: str) -> str:
    """The bytes (ASCII) that Ed25519 signs, rebuilt per RFC 9421 section 2.5 from the headers."""
    params = headers["Signature-Input"].removeprefix(f"{label}=")
    return "\n".join((f'"@method": {method.upper()}', f'"@target-uri": {target_uri(url)}',
                      f'"content-digest": {headers["Content-Digest"]}', f'"@signature-params": {params}'))


def make() -> dict:
    out: dict = {
        "_comment": ("TEST-ONLY keys and vectors of docs/signing.md. The seeds below are public, fixed test "
                     "values: never use them outside tests. Regenerate with `python -m tests.vectors.make_signing`."),
        "keys": {name: {"account": key(name).account, "seed_b64": b64(SEEDS[name][1]), "public_key_b64": key(name).public_key}
                 for name in SEEDS},
        "canonical": [], "refused": [], "decode_refused": [], "txs": [], "requests": []}
    for name, value in CANONICAL:
        raw = canonical(value)
        out["canonical"].append({"name": name, "value": value, "canonical": raw.decode(), "canonical_b64": b64(raw)})
    for name, value in REFUSED:
        # as JSON text (ASCII, \u escapes): a lone surrogate cannot be written in a UTF-8 file
        out["refused"].append({"name": name, "value_json": json.dumps(value)})
    for name, raw in DECODE_REFUSED:
        out["decode_refused"].append({"name": name, "tx": raw})
    for name, type_, who, chain_id, nonce, payload in TXS:
        tx = Tx.build(key(who), chain_id, type_, nonce, payload)
        out["txs"].append({
            "name": name, "key": who,
            "unsigned": {"chain_id": tx.chain_id, "type": tx.type, "signer": tx.signer, "nonce": tx.nonce, "payload": payload},
            "signing_bytes": tx.signing_bytes().decode(), "sig": tx.sig,
            "encoded": tx.encode().decode(), "encoded_b64": b64(tx.encode()), "hash": tx.hash})
    for name, who, method, url, body, created, nonce, label in REQUESTS:
        ident = key(who)
        with mock.patch.object(httpsig.secrets, "token_urlsafe", return_value=nonce), \
             mock.patch.object(httpsig.HTTPMessageSigner, "DEFAULT_SIGNATURE_LABEL", label):
            headers = httpsig.sign(ident, method, url, body,
                                   created=datetime.datetime.fromtimestamp(created, datetime.timezone.utc))
        out["requests"].append({
            "name": name, "key": who, "method": method, "url": url, "body": body.decode(), "created": created,
            "nonce": nonce, "label": label, "headers": headers,
            "signature_base": signature_base(method, url, headers, label)})
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(make(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
