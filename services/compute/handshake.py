"""The peer channel's authenticated key exchange and its framing, as pure functions (no I/O).

Two compute nodes meet for one job. Each proves it holds the Ed25519 key that the chain has
registered for its node account, over a transcript that binds:

    chain id, job id, client node account, server node account,
    a fresh 32-byte nonce from each side, an ephemeral X25519 key from each side

Messages (each one frame, before any encryption):

    client → server  hello    {v, chain_id, job, client, server, nonce, eph}
    server → client  welcome  {nonce, eph, sig = Ed25519_server("rdx-peer/1 server" || SHA-256(transcript))}
    client → server  auth     {sig = Ed25519_client("rdx-peer/1 client" || SHA-256(transcript))}
    server → client  ready    (the first encrypted frame: the server accepted)

The keys to check each signature come from the chain (``/accounts/<member>.node``), never from
the peer; the caller does that look-up and the membership checks. The two ephemeral keys give
per-direction session keys (libsodium ``crypto_kx``: BLAKE2b over the X25519 shared secret and
both public keys); every later frame is ChaCha20-Poly1305 (IETF) under its direction's key
with a frame counter as nonce and the session id (SHA-256 of the transcript) as associated
data, so frames cannot be read, altered, replayed, reordered or moved to another session.
Fresh nonces and ephemeral keys make every session's keys new (forward secrecy), and a
captured handshake cannot be replayed: the other side's nonce will differ.

Why not TLS: the identities to pin are the chain's Ed25519 node keys, not X.509 certificates,
and grpcio's Python API has no hook to verify a peer certificate against a key fetched at
connection time. The handshake above is that check, in ~150 lines that can be read whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl import bindings as sodium

from services.common.identity import Identity, verify

VERSION = 1
NONCE_BYTES = 32
MAX_HEADER = 64 * 1024


class HandshakeError(Exception):
    """The peer could not prove who it is, or spoke out of turn."""


class FrameError(Exception):
    """A frame that does not decrypt or decode: tampered, replayed, reordered or malformed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise HandshakeError(f"{what} is not base64") from None
    if len(raw) != size:
        raise HandshakeError(f"{what} must be {size} bytes")
    return raw


# -- message encoding (shared by handshake and application frames) ---------------------------------

def encode(kind: str, header: dict[str, Any] | None = None, body: bytes = b"") -> bytes:
    """``u32 header length || JSON header (with "k": kind) || body``."""
    head = json.dumps({**(header or {}), "k": kind}, separators=(",", ":"), sort_keys=True).encode()
    return struct.pack(">I", len(head)) + head + body


def decode(frame: bytes) -> tuple[str, dict[str, Any], bytes]:
    if len(frame) < 4:
        raise FrameError("frame too short")
    (n,) = struct.unpack(">I", frame[:4])
    if n > MAX_HEADER or 4 + n > len(frame):
        raise FrameError("bad frame header length")
    try:
        header = json.loads(frame[4:4 + n])
        kind = header.pop("k")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FrameError("bad frame header") from None
    return kind, header, frame[4 + n:]


# -- the handshake ---------------------------------------------------------------------------------

def _transcript(chain_id: str, job: str, client: str, server: str, client_nonce: bytes, client_eph: bytes,
                server_nonce: bytes, server_eph: bytes) -> bytes:
    fields = {"v": VERSION, "chain_id": chain_id, "job": job, "client": client, "server": server,
              "client_nonce": _b64(client_nonce), "client_eph": _b64(client_eph),
              "server_nonce": _b64(server_nonce), "server_eph": _b64(server_eph)}
    return hashlib.sha256(b"rdx-peer/1 transcript\n" + json.dumps(fields, sort_keys=True).encode()).digest()


def _to_sign(role: str, transcript: bytes) -> bytes:
    return f"rdx-peer/1 {role}\n".encode() + transcript


@dataclass(frozen=True)
class SessionKeys:
    send: bytes
    recv: bytes
    session_id: bytes  # SHA-256 of the transcript: the same on both sides


class ClientHandshake:
    def __init__(self, identity: Identity, chain_id: str, job: str, server_account: str):
        self.identity, self.chain_id, self.job, self.server = identity, chain_id, job, server_account
        self.nonce = os.urandom(NONCE_BYTES)
        self.eph_pk, self.eph_sk = sodium.crypto_kx_keypair()

    def hello(self) -> bytes:
        return encode("hello", {"v": VERSION, "chain_id": self.chain_id, "job": self.job,
                                "client": self.identity.account, "server": self.server,
                                "nonce": _b64(self.nonce), "eph": _b64(self.eph_pk)})

    def finish(self, welcome: bytes, server_public_key: str) -> tuple[bytes, SessionKeys]:
        """Check the server's proof with its chain key; return our proof (auth) and the session keys."""
        try:
            kind, msg, _ = decode(welcome)
        except FrameError as exc:
            raise HandshakeError(str(exc)) from None
        if kind != "welcome":
            raise HandshakeError(f"expected welcome, got {kind}")
        server_nonce = _unb64(msg.get("nonce"), NONCE_BYTES, "server nonce")
        server_eph = _unb64(msg.get("eph"), 32, "server ephemeral key")
        t = _transcript(self.chain_id, self.job, self.identity.account, self.server, self.nonce, self.eph_pk,
                        server_nonce, server_eph)
        if not isinstance(msg.get("sig"), str) or not verify(server_public_key, _to_sign("server", t), msg["sig"]):
            raise HandshakeError(f"{self.server} did not prove it holds its registered node key")
        try:
            rx, tx = sodium.crypto_kx_client_session_keys(self.eph_pk, self.eph_sk, server_eph)
        except Exception:  # noqa: BLE001 - libsodium refuses a degenerate key
            raise HandshakeError("unusable server ephemeral key") from None
        auth = encode("auth", {"sig": self.identity.sign(_to_sign("client", t))})
        return auth, SessionKeys(send=tx, recv=rx, session_id=t)


@dataclass(frozen=True)
class Hello:
    chain_id: str
    job: str
    client: str
    server: str
    nonce: bytes
    eph: bytes


def parse_hello(frame: bytes) -> Hello:
    try:
        kind, msg, _ = decode(frame)
    except FrameError as exc:
        raise HandshakeError(str(exc)) from None
    if kind != "hello" or msg.get("v") != VERSION:
        raise HandshakeError("expected a version 1 hello")
    for name in ("chain_id", "job", "client", "server"):
        if not isinstance(msg.get(name), str) or not 0 < len(msg[name]) <= 200:
            raise HandshakeError(f"hello.{name} is missing or malformed")
    return Hello(msg["chain_id"], msg["job"], msg["client"], msg["server"],
                 _unb64(msg.get("nonce"), NONCE_BYTES, "client nonce"), _unb64(msg.get("eph"), 32, "client ephemeral key"))


class ServerHandshake:
    def __init__(self, identity: Identity, hello: Hello):
        self.identity, self.hello = identity, hello
        self.nonce = os.urandom(NONCE_BYTES)
        self.eph_pk, self.eph_sk = sodium.crypto_kx_keypair()
        self.t = _transcript(hello.chain_id, hello.job, hello.client, hello.server, hello.nonce, hello.eph,
                             self.nonce, self.eph_pk)

    def welcome(self) -> bytes:
        return encode("welcome", {"nonce": _b64(self.nonce), "eph": _b64(self.eph_pk),
                                  "sig": self.identity.sign(_to_sign("server", self.t))})

    def finish(self, auth: bytes, client_public_key: str) -> SessionKeys:
        try:
            kind, msg, _ = decode(auth)
        except FrameError as exc:
            raise HandshakeError(str(exc)) from None
        if kind != "auth" or not isinstance(msg.get("sig"), str):
            raise HandshakeError("expected auth")
        if not verify(client_public_key, _to_sign("client", self.t), msg["sig"]):
            raise HandshakeError(f"{self.hello.client} did not prove it holds its registered node key")
        try:
            rx, tx = sodium.crypto_kx_server_session_keys(self.eph_pk, self.eph_sk, self.hello.eph)
        except Exception:  # noqa: BLE001
            raise HandshakeError("unusable client ephemeral key") from None
        return SessionKeys(send=tx, recv=rx, session_id=self.t)


# -- encrypted frames ------------------------------------------------------------------------------

class FrameCipher:
    """ChaCha20-Poly1305 (IETF) per direction; the nonce is the frame's counter, never sent.

    `cryptography`'s (OpenSSL's) rather than libsodium's: the same bytes (tested), ~5x faster on a
    large frame here (an 855 KB HE ciphertext: 0.26 against 1.47 ms to seal, 2026-12-04)."""

    def __init__(self, keys: SessionKeys):
        self._keys = keys
        self._send = ChaCha20Poly1305(keys.send)
        self._recv = ChaCha20Poly1305(keys.recv)
        self._sent = 0
        self._received = 0

    @staticmethod
    def _nonce(counter: int) -> bytes:
        return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")

    def seal(self, plaintext: bytes) -> bytes:
        nonce = self._nonce(self._sent)
        self._sent += 1
        return self._send.encrypt(nonce, plaintext, self._keys.session_id)

    def open(self, ciphertext: bytes) -> bytes:
        nonce = self._nonce(self._received)
        try:
            plaintext = self._recv.decrypt(nonce, ciphertext, self._keys.session_id)
        except InvalidTag:
            raise FrameError("a frame failed authentication (tampered, replayed or out of order)") from None
        self._received += 1
        return plaintext
