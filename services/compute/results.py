"""Result envelopes: a job's result, sealed to the node key of the member it is for, is all
that is stored.

Who gets a result is the job type's protocol (the consumer in psi, aggregation and he_scoring;
every party its own outcome in supply_chain). Where it is stored is fixed here and in the
lifecycle: on the node of the member it is for, and nowhere else. A node seals only for its own
member — ``ctx.commit_result`` takes no recipient — so a result never exists, sealed or clear,
on a node that is not its owner's.

Sealing: libsodium's sealed box (an ephemeral X25519 key, XSalsa20-Poly1305) to the X25519
form of the Ed25519 key the chain holds for ``<member>.node``, at once; only the sealed bytes
are kept. The member fetches them from its own node's HTTP API and opens them with that node
key (``open_envelope``). The envelope names the job, its type and the member it is for, and
carries the salt that opens the result commitment ``SHA-256("rdx/result/v1\\n" ‖ salt ‖ result)``
the job type showed the peers (and bound into the result hash every participant attests on
chain), so the member can later prove what its result was.

Leakage: the envelope's length (about the result's length) to whoever can read the node's
database or API; nothing else without the node key.

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


def commitment_of(salt: bytes, result: bytes) -> str:
    """SHA-256("rdx/result/v1\\n" || salt || result), hex: hiding (32-byte salt) and binding."""
    return hashlib.sha256(b"rdx/result/v1\n" + salt + result).hexdigest()


def commit(result: bytes) -> tuple[str, bytes]:
    """(hex commitment, salt) for ``result`` with a fresh salt."""
    salt = os.urandom(32)
    return commitment_of(salt, result), salt


def seal(node_public_key_b64: str, job: str, job_type: str, result: bytes, salt: bytes, commitment: str, *,
         member: str) -> bytes:
    """The envelope for ``member``: sealed to its node's Ed25519 public key (base64, as on chain)."""
    recipient = VerifyKey(base64.b64decode(node_public_key_b64)).to_curve25519_public_key()
    body = json.dumps({"job": job, "type": job_type, "member": member, "result": result.decode("utf-8"),
                       "salt": salt.hex(), "commitment": commitment}, sort_keys=True).encode()
    return SealedBox(PublicKey(bytes(recipient))).encrypt(body)


def open_envelope(node: Identity, envelope: bytes | str) -> dict[str, Any]:
    """The member's side: open its sealed result (bytes or base64) with its node key.

    Returns {job, type, member, result (parsed JSON), salt, commitment}, after checking that the
    result opens the commitment. Raises nacl.exceptions.CryptoError for another node's envelope."""
    if isinstance(envelope, str):
        envelope = base64.b64decode(envelope)
    private = PrivateKey(bytes(node.signing_key.to_curve25519_private_key()))
    body = json.loads(SealedBox(private).decrypt(envelope))
    text = body["result"].encode("utf-8")
    if commitment_of(bytes.fromhex(body["salt"]), text) != body["commitment"]:
        raise ValueError("the result does not open its commitment")
    body["result"] = json.loads(text)
    return body
