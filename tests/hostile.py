"""Hostile transactions and queries, one of each class the chain must answer without stopping.

Shared by the live tests (sent over CometBFT's RPC) and the byzantine proposer (put straight
into its proposals). Each builder returns raw tx bytes as an attacker would send them.
"""

from __future__ import annotations

import json

from services.common.identity import Identity
from services.common.tx import MAX_TX_BYTES, Tx


def _signed_text(who: Identity, chain_id: str, nonce: int, payload_json: str, type_: str = "members.RotateKey") -> bytes:
    """A tx whose payload is given as JSON text (so it can hold what json.dumps never writes),
    signed over exactly the bytes it carries."""
    head = f'{{"chain_id":{json.dumps(chain_id)},"nonce":{nonce},"payload":{payload_json},'
    unsigned = (head + f'"signer":{json.dumps(who.account)},"type":{json.dumps(type_)}}}').encode()
    sig = who.sign(unsigned)
    return (head + f'"sig":"{sig}","signer":{json.dumps(who.account)},"type":{json.dumps(type_)}}}').encode()


def hostile_txs(who: Identity, chain_id: str, nonce: int) -> dict[str, bytes]:
    """One tx per class, signed by ``who`` (a registered signer) where a signature matters.
    ``nonce`` is the signer's next nonce, so only the hostile part can make a tx fail."""
    valid = Tx.build(who, chain_id, "members.RotateKey", nonce, {"public_key": who.public_key})
    envelope = json.loads(valid.encode())
    deep = "[" * 5000 + "]" * 5000
    return {
        "lone surrogate": _signed_text(who, chain_id, nonce, '{"public_key":"\\ud800"}'),
        "deep nesting": _signed_text(who, chain_id, nonce, '{"public_key":' + deep + "}"),
        "nesting past the limit": _signed_text(who, chain_id, nonce, '{"x":' + "[" * 20 + "]" * 20 + "}"),
        "huge integer": _signed_text(who, chain_id, nonce, '{"public_key":' + "9" * 5000 + "}"),
        "integer past 64 bits": _signed_text(who, chain_id, nonce, '{"public_key":' + str(1 << 64) + "}"),
        "integer past 2^53": _signed_text(who, chain_id, nonce, '{"public_key":' + str(2**53) + "}"),
        "huge nonce": _signed_text(who, chain_id, 10 ** 30, f'{{"public_key":"{who.public_key}"}}'),
        "not utf-8": b'{"chain_id":"\xff\xfe"}',
        "utf-16 json": json.dumps(envelope).encode("utf-16"),
        "nan": _signed_text(who, chain_id, nonce, '{"public_key":NaN}'),
        "infinity": _signed_text(who, chain_id, nonce, '{"public_key":-Infinity}'),
        "float": _signed_text(who, chain_id, nonce, '{"public_key":1.5}'),
        "duplicate keys": _signed_text(who, chain_id, nonce, f'{{"public_key":"{who.public_key}","public_key":"x"}}'),
        "unknown envelope field": json.dumps({**envelope, "extra": 1}, sort_keys=True, separators=(",", ":")).encode(),
        "unknown payload field": Tx.build(who, chain_id, "members.RotateKey", nonce,
                                          {"public_key": who.public_key, "extra": 1}).encode(),
        "wrong type": json.dumps({**envelope, "nonce": str(nonce)}, sort_keys=True, separators=(",", ":")).encode(),
        "not an object": b"[1,2,3]",
        "not canonical": json.dumps(envelope, indent=1).encode(),
        "bad signature": json.dumps({**envelope, "sig": Identity.generate("x").sign(b"x")},
                                    sort_keys=True, separators=(",", ":")).encode(),
        "another chain": Tx.build(who, chain_id + "-other", "members.RotateKey", nonce,
                                  {"public_key": who.public_key}).encode(),
        "unknown signer": Tx.build(Identity.generate("nobody-at-all"), chain_id, "members.RotateKey", 1,
                                   {"public_key": who.public_key}).encode(),
        "oversize": Tx.build(who, chain_id, "members.RotateKey", nonce,
                             {"public_key": "k" * (MAX_TX_BYTES + 10)}).encode(),
        "empty": b"",
    }


def hostile_query_paths(asset: str) -> dict[str, str]:
    """Query paths of each class; ``asset`` is a listed asset (the quote path reaches pricing)."""
    return {
        "superscript digit": f"/quote/{asset}/\u00b2",
        "arabic-indic digits": f"/quote/{asset}/\u0663\u0664",
        "huge record count": f"/quote/{asset}/{'9' * 40}",
        "negative record count": f"/quote/{asset}/-1",
        "long path": "/members/" + "a" * 100_000,
        "query string on a key": "/members/x?limit=5",
        "page limit too large": "/members/?limit=100000",
        "page limit not a number": "/members/?limit=\u00b2",
        "page after another prefix": "/members/?after=accounts/zzz",
        "unknown page field": "/members/?limit=1&sort=desc",
        "repeated page field": "/members/?limit=1&limit=2",
        "surrogate in path": "/members/\ud800",
        "nul in path": "/members/\x00",
        "empty": "",
        "only slashes": "////",
    }
