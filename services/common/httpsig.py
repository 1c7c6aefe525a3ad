"""Signed HTTP requests for member systems: RFC 9421 HTTP Message Signatures with Ed25519
(the http-message-signatures library), covering the method, the target URI, the body's
Content-Digest (RFC 9530) and the creation time; ``keyid`` is the signer's chain account, whose
public key the gateway reads from the chain."""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
from starlette.datastructures import MutableHeaders

from services.common.identity import Identity, unb64

COMPONENTS = ("@method", "@target-uri", "content-digest")


@dataclass
class Message:
    """The minimal request shape the library reads and writes."""

    method: str
    url: str
    headers: MutableHeaders = field(default_factory=MutableHeaders)


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey | None = None, public: Ed25519PublicKey | None = None):
        self.private, self.public = private, public

    def resolve_private_key(self, key_id: str):
        return self.private

    def resolve_public_key(self, key_id: str):
        return self.public


def sign(identity: Identity, method: str, url: str, body: bytes, headers: dict[str, str] | None = None,
         created: datetime.datetime | None = None) -> dict[str, str]:
    """Headers to add to the request: Content-Digest, Signature-Input, Signature."""
    message = Message(method.upper(), url, MutableHeaders(headers=headers or {}))
    private = Ed25519PrivateKey.from_private_bytes(bytes(identity.signing_key))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(private=private))
    # A random nonce: Ed25519 is deterministic, so two identical requests in one second would
    # otherwise carry the same signature and the second would look like a replay.
    signer.sign(message, key_id=identity.account, created=created or datetime.datetime.now(datetime.timezone.utc),
                nonce=secrets.token_urlsafe(12), covered_component_ids=COMPONENTS, body=body)
    return {k: message.headers[k] for k in ("Content-Digest", "Signature-Input", "Signature")}


class SignatureError(ValueError):
    pass


def verify(public_key_b64: str, method: str, url: str, headers: dict[str, str], body: bytes,
           max_age_s: int) -> datetime.datetime:
    """Verifies the signature, the covered components and the body digest; returns ``created``."""
    public = Ed25519PublicKey.from_public_bytes(unb64(public_key_b64))
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(public=public))
    message = Message(method.upper(), url, MutableHeaders(headers=dict(headers)))
    try:
        results = verifier.verify(message, max_age=datetime.timedelta(seconds=max_age_s),
                                  require_components=COMPONENTS, body=body)
    except Exception as exc:  # the library raises several types; the reason is what matters
        raise SignatureError(f"signature does not verify: {type(exc).__name__}") from None
    created = results[0].parameters.get("created")
    if created is None:
        raise SignatureError("signature has no created time")
    return created if isinstance(created, datetime.datetime) else datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
