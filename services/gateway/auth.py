"""Who is calling: an API key (``Authorization: Bearer rdx_…``) or an RFC 9421 signed request
by a chain account. A signed request by a member's own key acts as its member admin (the
association's as association admin); one by ``<member>.node`` as its compute operator; one by a
member's delegate (``<member>.delegate-<label>``, while active and unexpired) as its analyst."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import http_sf
from fastapi import Request

from services.common import httpsig
from services.common.tx import ACCOUNT
from services.gateway.chainview import ChainView
from services.gateway.db import StoreUnavailable
from services.gateway.keys import KeyStore
from services.gateway.problems import Problem


@dataclass(frozen=True)
class Principal:
    member: str
    role: str
    key_id: str  # API key id, or the signing chain account
    method: str  # "api_key" | "signature"
    member_roles: tuple[str, ...] = ()


def replay_key(signature_input: str, signature: str) -> bytes:
    """What makes a signed request the same request again: SHA-256 of the signature's bytes and its
    RFC 9421 nonce, not the header's text. A label renamed in both headers, a parameter added to the
    ``Signature`` member, other whitespace or another base64 spelling of the same bytes all verify,
    and all give the same key. Call it only on headers that verified (one label in each)."""
    try:
        inputs = http_sf.parse(signature_input.encode(), tltype="dictionary")
        signatures = http_sf.parse(signature.encode(), tltype="dictionary")
        [(label, (_, params))] = inputs.items()
        sig_bytes = signatures[label][0]
    except Exception:  # noqa: BLE001 - outside bytes: whatever went wrong, the request is refused
        raise Problem(401, "Invalid signature", "the Signature and Signature-Input headers do not parse") from None
    nonce = params.get("nonce", "")
    if not isinstance(sig_bytes, bytes) or not isinstance(nonce, str):
        raise Problem(401, "Invalid signature", "the signature must be a byte sequence and its nonce a string")
    return hashlib.sha256(len(sig_bytes).to_bytes(4, "big") + sig_bytes + nonce.encode()).digest()


def signing_account(signature_input: str) -> str:
    """The chain account whose key must verify the request: the ``keyid`` parameter of the one
    signature in ``Signature-Input``, parsed as the structured field it is (a text search would take
    ``keyid="…"`` from inside another parameter, such as ``xkeyid``), and an account id before the
    chain is asked about it."""
    try:
        [(_, (_, params))] = http_sf.parse(signature_input.encode(), tltype="dictionary").items()
    except Exception:  # noqa: BLE001 - outside bytes: whatever went wrong, the request is refused
        raise Problem(401, "Invalid signature", "Signature-Input does not parse as one signature") from None
    keyid = params.get("keyid")
    if not isinstance(keyid, str) or not ACCOUNT.fullmatch(keyid):
        raise Problem(401, "Unknown key", "the signature's keyid names no chain account")
    return keyid


class ReplayCache(ABC):
    """Signatures seen within the skew window; a second use of one is a replay."""

    def __init__(self, window_s: int):
        self.window = window_s

    @abstractmethod
    async def first_use(self, key: bytes) -> bool:
        """True the first time ``key`` is seen within twice the skew window (a signature stays
        acceptable for the skew either side of the gateway's clock), False on any later use."""


class LocalReplayCache(ReplayCache):
    """One gateway's memory."""

    def __init__(self, window_s: int):
        super().__init__(window_s)
        self._seen: dict[bytes, float] = {}

    async def first_use(self, key: bytes) -> bool:
        now = time.monotonic()
        if len(self._seen) > 100_000:
            self._seen = {s: t for s, t in self._seen.items() if now - t < 2 * self.window}
        if key in self._seen and now - self._seen[key] < 2 * self.window:
            return False
        self._seen[key] = now
        return True


class RedisReplayCache(ReplayCache):
    """Shared by replicas: ``SET key NX EX`` is one atomic step, so of two replicas that get the same
    signature at once exactly one accepts it."""

    def __init__(self, client, window_s: int, prefix: str = "rdx:gw"):
        super().__init__(window_s)
        self.client, self.prefix = client, prefix

    async def first_use(self, key: bytes) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(await self.client.set(f"{self.prefix}:replay:{key.hex()}", b"1", nx=True, ex=2 * self.window))
        except RedisError as exc:  # fail closed: a replay must not pass because Redis is away
            raise StoreUnavailable(f"Redis did not answer ({type(exc).__name__})") from None


class Authenticator:
    def __init__(self, keys: KeyStore, chain: ChainView, skew_s: int, bootstrap_sha256: str | None = None,
                 replays: ReplayCache | None = None):
        self.keys, self.chain, self.skew = keys, chain, skew_s
        self.replays = replays or LocalReplayCache(skew_s)
        self.bootstrap_sha256 = bootstrap_sha256

    async def __call__(self, request: Request) -> Principal:
        principal = await self._identify(request)
        member = await self.chain.member(principal.member)
        if member is None:
            raise Problem(401, "Unknown member", f"{principal.member} is not a member of the exchange")
        if member["status"] != "active":
            raise Problem(403, "Member suspended", f"{principal.member} is suspended")
        principal = Principal(principal.member, principal.role, principal.key_id, principal.method,
                              tuple(member["roles"]))
        request.state.principal = principal
        return principal

    async def _identify(self, request: Request) -> Principal:
        # One credential per request: with two Authorization lines, a proxy that checked or logged one
        # of them and this gateway, which would act on the first, could disagree about who is calling.
        if len(request.headers.getlist("authorization")) > 1:
            raise Problem(400, "Ambiguous credentials", "send one Authorization header",
                          {"WWW-Authenticate": "Bearer"})
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
            key = await self.keys.verify(token)
            if key is None and self._is_bootstrap(token):
                return Principal("association", "association_admin", "bootstrap", "api_key")
            if key is None:
                raise Problem(401, "Invalid API key", "the API key is unknown, malformed or revoked",
                              {"WWW-Authenticate": "Bearer"})
            return Principal(key.member, key.role, key.key_id, "api_key")
        if "signature" in request.headers and "signature-input" in request.headers:
            return await self._signed(request)
        raise Problem(401, "Authentication required", "send an API key or an RFC 9421 signed request",
                      {"WWW-Authenticate": "Bearer"})

    def _is_bootstrap(self, token: str) -> bool:
        return bool(self.bootstrap_sha256) and hmac.compare_digest(
            hashlib.sha256(token.encode()).hexdigest(), self.bootstrap_sha256)

    async def _signed(self, request: Request) -> Principal:
        # A field sent on several lines is one comma-joined value (RFC 9110 5.3), the same for the
        # verifier, the key's account and the replay key: otherwise one line could be verified and another used.
        headers = {name: ", ".join(request.headers.getlist(name)) for name in request.headers.keys()}
        account = signing_account(headers["signature-input"])
        acc = await self.chain.account(account)
        if acc is None:
            raise Problem(401, "Unknown key", f"no chain account {account!r} signs for the exchange")
        body = await request.body()
        try:
            created = httpsig.verify(acc["public_key"], request.method, str(request.url), headers, body, self.skew)
        except httpsig.SignatureError as exc:
            raise Problem(401, "Invalid signature", str(exc)) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if abs((now - created).total_seconds()) > self.skew:
            raise Problem(401, "Signature expired", f"created more than {self.skew}s from the gateway's clock")
        key = replay_key(headers["signature-input"], headers["signature"])
        if not await self.replays.first_use(key):
            raise Problem(401, "Replayed signature", "this signature was already used")
        if acc["kind"] == "node":
            return Principal(acc["member"], "compute_operator", account, "signature")
        if acc["kind"] == "delegate":  # a member's delegated key: its analyst, while the chain would take it
            if acc.get("status") != "active" or time.time() >= acc.get("expires_at", 0):
                raise Problem(401, "Key not active", f"delegate {account} was undelegated or has expired")
            return Principal(acc["member"], "analyst", account, "signature")
        member = await self.chain.member(acc["member"])
        role = "association_admin" if member and "association" in member["roles"] else "member_admin"
        return Principal(acc["member"], role, account, "signature")
