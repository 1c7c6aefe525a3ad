"""Keys, the canonical transaction encoding and signed requests: the bytes docs/signing.md specifies.

The encoding is written here, not taken from the servers' package, so that a member system
installs this client alone; tests/unit/rdx/test_client_signing.py holds it to the spec's vectors
(tests/vectors/signing.json), byte for byte. The canonical JSON is the standard library's
``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, which writes exactly
the spec's text for the values a tx may hold; what the spec refuses (floats, integers outside
+-(2^53 - 1), nesting deeper than 16, lone surrogates) is refused before a byte is signed.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms
from nacl.signing import SigningKey

INT_MIN, INT_MAX = -(2**53 - 1), 2**53 - 1
MAX_DEPTH = 16
COMPONENTS = ("@method", "@target-uri", "content-digest")


class EncodingError(ValueError):
    """A value the chain's canonical encoding refuses; nothing was signed or sent."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (docs/signing.md, "Canonical JSON")."""
    stack = [(value, 1)]
    while stack:  # iterative: a recursive walk is what deep nesting attacks
        v, depth = stack.pop()
        if isinstance(v, dict):
            if depth > MAX_DEPTH:
                raise EncodingError(f"nested deeper than {MAX_DEPTH} levels")
            if not all(isinstance(k, str) for k in v):
                raise EncodingError("object keys must be strings")
            stack.extend((item, depth + 1) for item in v.values())
        elif isinstance(v, (list, tuple)):
            if depth > MAX_DEPTH:
                raise EncodingError(f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in v)
        elif isinstance(v, float):
            raise EncodingError("floats are not allowed in transactions; use integers")
        elif isinstance(v, int) and not isinstance(v, bool) and not INT_MIN <= v <= INT_MAX:
            raise EncodingError("an integer is outside +-(2^53 - 1), the range every signer can encode")
        elif not (v is None or isinstance(v, (str, int, bool))):
            raise EncodingError(f"a {type(v).__name__} is not a JSON value")
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise EncodingError("text holds a lone surrogate, which UTF-8 cannot encode") from None


@dataclass(frozen=True)
class Key:
    """A chain account (``bank-a``, or its node ``bank-a.node``) and its Ed25519 key (the 32-byte seed)."""

    account: str
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls, account: str) -> "Key":
        return cls(account, os.urandom(32))

    @classmethod
    def load(cls, path: Path | str) -> "Key":
        """A key file as ``rdx`` writes it: ``{"account", "secret_key": base64(seed)}``."""
        try:
            raw = json.loads(Path(path).read_text())
            return cls(raw["account"], base64.b64decode(raw["secret_key"], validate=True))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not an rdx key file ({type(exc).__name__})") from None

    def save(self, path: Path | str) -> None:
        """Written 0600, never overwriting a key: a key file is the member's own secret."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"account": self.account, "secret_key": b64(self.seed)}, f)

    @functools.cached_property
    def signing_key(self) -> SigningKey:
        """Derived once per key: the derivation costs about as much as a signature."""
        return SigningKey(self.seed)

    @property
    def public_key(self) -> str:
        """Base64 of the 32-byte public key, as registered on chain."""
        return b64(bytes(self.signing_key.verify_key))

    def sign(self, message: bytes) -> str:
        return b64(self.signing_key.sign(message).signature)


def sign_tx(key: Key, chain_id: str, type_: str, nonce: int, payload: dict[str, Any]) -> dict[str, Any]:
    """The signed envelope ``{chain_id, nonce, payload, sig, signer, type}``."""
    unsigned = {"chain_id": chain_id, "type": type_, "signer": key.account, "nonce": nonce, "payload": payload}
    return {**unsigned, "sig": key.sign(canonical(unsigned))}


def tx_hash(envelope: dict[str, Any]) -> str:
    """CometBFT's hash of the tx: upper-case hex SHA-256 of its canonical bytes."""
    return hashlib.sha256(canonical(envelope)).hexdigest().upper()


@dataclass
class _Message:
    method: str
    url: str
    headers: httpx.Headers


class _Resolver(HTTPSignatureKeyResolver):
    def __init__(self, private: Ed25519PrivateKey):
        self.private = private

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.private

    def resolve_public_key(self, key_id: str):  # a client only signs
        raise NotImplementedError


def sign_request(key: Key, method: str, url: str, body: bytes,
                 created: datetime.datetime | None = None, nonce: str | None = None,
                 label: str | None = None) -> dict[str, str]:
    """RFC 9421 headers for a gateway request: Content-Digest, Signature-Input, Signature.

    Covers the method, the target URI and the body's digest, with a random nonce: Ed25519 is
    deterministic, so two identical requests in one second would otherwise look like a replay."""
    message = _Message(method.upper(), url, httpx.Headers())
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519,
                               key_resolver=_Resolver(Ed25519PrivateKey.from_private_bytes(key.seed)))
    signer.sign(message, key_id=key.account, created=created or datetime.datetime.now(datetime.timezone.utc),
                nonce=nonce or secrets.token_urlsafe(12), label=label, covered_component_ids=COMPONENTS, body=body)
    return {k: message.headers[k] for k in ("Content-Digest", "Signature-Input", "Signature")}
