"""Opening a job's result: the member's node seals it (libsodium's sealed box) to the X25519 form
of the node's Ed25519 key; only that key opens it. The envelope carries the salt that opens the
result commitment ``SHA-256("rdx/result/v1\\n" || salt || result)`` bound into the result hash the
participants attested on chain, so the result is checked, not only decrypted."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from rdx_client.errors import RdxError
from rdx_client.models import OpenedResult
from rdx_client.signing import Key


class ResultError(RdxError):
    """The envelope is not for this node key, or does not open its commitment."""


def open_result(node_key: Key, envelope: str | bytes) -> OpenedResult:
    """Open a sealed result (base64 or bytes) with the member's node key."""
    try:
        sealed = base64.b64decode(envelope, validate=True) if isinstance(envelope, str) else envelope
        private = PrivateKey(bytes(node_key.signing_key.to_curve25519_private_key()))
        body = json.loads(SealedBox(private).decrypt(sealed))
        text, salt = body["result"].encode("utf-8"), bytes.fromhex(body["salt"])
    except CryptoError:
        raise ResultError(f"the envelope is not sealed to {node_key.account}'s key") from None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise ResultError("the envelope is not a result envelope") from None
    if hashlib.sha256(b"rdx/result/v1\n" + salt + text).hexdigest() != body.get("commitment"):
        raise ResultError("the result does not open its commitment")
    try:
        return OpenedResult.model_validate({**body, "result": json.loads(text)}, strict=False)
    except ValueError:
        raise ResultError("the envelope's fields are not a result's") from None
