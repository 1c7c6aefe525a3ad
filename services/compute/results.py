"""Result envelopes: a job's result, sealed to the consumer's node key, is all that is stored.

The consumer's node is where a PSI result comes into being; it never exists anywhere else.
It is sealed at once with libsodium's sealed box (an ephemeral X25519 key, XSalsa20-Poly1305)
to the X25519 form of the consumer node's Ed25519 key as registered on chain, and only the
sealed bytes are kept. The consumer fetches them from its own node's HTTP API and opens them
with its node key (``open_envelope``). The envelope also carries the salt that opens the
result commitment the peers saw (and that is bound into the result hash on chain), so the
consumer can later prove what the result was.

Why libsodium and not pycryptodome here: "encrypt to a public key" is exactly a sealed box,
and PyNaCl (already the signing library) has it; nothing needs to be composed by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import VerifyKey

from services.common.identity import Identity


def commit(result: bytes) -> tuple[str, bytes]:
    """(hex commitment, salt): SHA-256("rdx/result/v1" || salt || result), hiding and binding."""
    salt = os.urandom(32)
    return hashlib.sha256(b"rdx/result/v1\n" + salt + result).hexdigest(), salt


def seal(node_public_key_b64: str, job: str, job_type: str, result: bytes, salt: bytes, commitment: str) -> bytes:
    recipient = VerifyKey(base64.b64decode(node_public_key_b64)).to_curve25519_public_key()
    body = json.dumps({"job": job, "type": job_type, "result": result.decode("utf-8"), "salt": salt.hex(),
                       "commitment": commitment}, sort_keys=True).encode()
    return SealedBox(PublicKey(bytes(recipient))).encrypt(body)


def open_envelope(node: Identity, envelope: bytes | str) -> dict[str, Any]:
    """The consumer's side: open a sealed result (bytes or base64) with the node key.

    Returns {job, type, result (parsed JSON), salt, commitment}, after checking that the result
    opens the commitment."""
    if isinstance(envelope, str):
        envelope = base64.b64decode(envelope)
    private = PrivateKey(bytes(node.signing_key.to_curve25519_private_key()))
    body = json.loads(SealedBox(private).decrypt(envelope))
    text = body["result"].encode("utf-8")
    expected = hashlib.sha256(b"rdx/result/v1\n" + bytes.fromhex(body["salt"]) + text).hexdigest()
    if expected != body["commitment"]:
        raise ValueError("the result does not open its commitment")
    body["result"] = json.loads(text)
    return body
