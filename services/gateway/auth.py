"""Who is calling: an API key (``Authorization: Bearer rdx_…``) or an RFC 9421 signed request
by a chain account. A signed request by a member's own key acts as its member admin (the
association's as association admin); one by ``<member>.node`` as its compute operator."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
from dataclasses import dataclass

from fastapi import Request

from services.common import httpsig
from services.gateway.chainview import ChainView
from services.gateway.keys import KeyStore
from services.gateway.problems import Problem


@dataclass(frozen=True)
class Principal:
    member: str
    role: str
    key_id: str  # API key id, or the signing chain account
    method: str  # "api_key" | "signature"
    member_roles: tuple[str, ...] = ()


class ReplayCache:
    """Signatures seen within the skew window; a second use of one is a replay."""

    def __init__(self, window_s: int):
        self.window, self._seen = window_s, {}

    def check_and_add(self, signature: str) -> bool:
        now = time.monotonic()
        if len(self._seen) > 100_000:
            self._seen = {s: t for s, t in self._seen.items() if now - t < 2 * self.window}
        if signature in self._seen and now - self._seen[signature] < 2 * self.window:
            return False
        self._seen[signature] = now
        return True


class Authenticator:
    def __init__(self, keys: KeyStore, chain: ChainView, skew_s: int, bootstrap_sha256: str | None = None):
        self.keys, self.chain, self.skew = keys, chain, skew_s
        self.replays = ReplayCache(skew_s)
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
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
            key = self.keys.verify(token)
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
        params = request.headers["signature-input"]
        account = params.split('keyid="', 1)[1].split('"', 1)[0] if 'keyid="' in params else ""
        acc = await self.chain.account(account) if account else None
        if acc is None:
            raise Problem(401, "Unknown key", f"no chain account {account!r} signs for the exchange")
        body = await request.body()
        try:
            created = httpsig.verify(acc["public_key"], request.method, str(request.url), dict(request.headers),
                                     body, self.skew)
        except httpsig.SignatureError as exc:
            raise Problem(401, "Invalid signature", str(exc)) from None
        now = datetime.datetime.now(datetime.timezone.utc)
        if abs((now - created).total_seconds()) > self.skew:
            raise Problem(401, "Signature expired", f"created more than {self.skew}s from the gateway's clock")
        if not self.replays.check_and_add(request.headers["signature"]):
            raise Problem(401, "Replayed signature", "this signature was already used")
        if acc["kind"] == "node":
            return Principal(acc["member"], "compute_operator", account, "signature")
        member = await self.chain.member(acc["member"])
        role = "association_admin" if member and "association" in member["roles"] else "member_admin"
        return Principal(acc["member"], role, account, "signature")
