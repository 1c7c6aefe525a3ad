"""OpenID Connect sign-in (authorization code flow with PKCE and a nonce) against the association's
identity provider; joserfc verifies the ID token.

The two OAuth 2.0 calls (the authorization URL, the code-for-token POST with client_secret_basic)
are written here over httpx: Authlib's httpx client is deprecated in its current release, and the
calls are a few lines each (RFC 6749 §4.1, RFC 7636 S256).

What the portal takes from the IdP: the subject, a display name, and the member and role the
association assigned to the person (the ``rdx_member`` and ``rdx_role`` claims of the ID token).
An ID token is accepted only signed by a key of the issuer's JWKS, for this client, unexpired,
with the nonce of the sign-in this browser started.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

PORTAL_ROLES = ("association_admin", "member_admin", "analyst", "auditor")  # people, not machines
MEMBER_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,79}$")
DISCOVERY_TTL_S = 300.0


class SignInError(Exception):
    """The IdP's answer cannot be accepted; the message names why (never a token)."""


@dataclass(frozen=True)
class Identity:
    subject: str
    name: str
    member: str
    role: str


class OIDC:
    def __init__(self, issuer: str, client_id: str, client_secret: str, redirect_uri: str, http: httpx.AsyncClient):
        self.issuer, self.client_id, self.redirect_uri = issuer, client_id, redirect_uri
        self._secret = client_secret
        self._http = http
        self._meta: tuple[float, dict, KeySet] | None = None

    async def _discover(self) -> tuple[dict, KeySet]:
        if self._meta is None or time.monotonic() - self._meta[0] > DISCOVERY_TTL_S:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta = (await self._http.get(url)).raise_for_status().json()
            if meta.get("issuer") != self.issuer:
                raise SignInError(f"the IdP names itself {meta.get('issuer')!r}, not {self.issuer!r}")
            keys = KeySet.import_key_set((await self._http.get(meta["jwks_uri"])).raise_for_status().json())
            self._meta = (time.monotonic(), meta, keys)
        return self._meta[1], self._meta[2]

    async def start(self) -> tuple[str, str, str, str]:
        """(authorization URL, state, nonce, PKCE verifier) for a new sign-in."""
        meta, _ = await self._discover()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                           "scope": "openid profile", "state": state, "nonce": nonce,
                           "code_challenge": challenge, "code_challenge_method": "S256"})
        return f"{meta['authorization_endpoint']}?{query}", state, nonce, verifier

    async def finish(self, code: str, nonce: str, verifier: str) -> Identity:
        meta, keys = await self._discover()
        try:
            answer = await self._http.post(meta["token_endpoint"], auth=(self.client_id, self._secret), data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": verifier})
            token = answer.json() if answer.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            raise SignInError("the IdP did not answer the code exchange") from None
        if not isinstance(token, dict) or not token:
            raise SignInError(f"the IdP refused the code (HTTP {answer.status_code})")
        raw = token.get("id_token")
        if not isinstance(raw, str):
            raise SignInError("the IdP answered without an ID token")
        return identity_of(verify_id_token(raw, keys, self.issuer, self.client_id, nonce))


ID_TOKEN_ALGORITHMS = ["RS256", "ES256", "EdDSA"]  # asymmetric only: never "none", never an HMAC


def verify_id_token(raw: str, keys: KeySet, issuer: str, client_id: str, nonce: str) -> dict:
    """The claims of an ID token signed by one of ``keys`` for this client and sign-in, unexpired."""
    try:
        decoded = jwt.decode(raw, keys, algorithms=ID_TOKEN_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": client_id},
            nonce={"essential": True, "value": nonce},
            sub={"essential": True},
            exp={"essential": True},
        ).validate(decoded.claims)
    except (JoseError, ValueError) as exc:
        raise SignInError(f"the ID token is not valid ({type(exc).__name__})") from None
    return decoded.claims


def identity_of(claims: dict) -> Identity:
    member, role = claims.get("rdx_member"), claims.get("rdx_role")
    if not isinstance(member, str) or not MEMBER_ID.match(member):
        raise SignInError("the identity names no member of the exchange")
    if role not in PORTAL_ROLES:
        raise SignInError("the identity has no role the portal knows")
    name = claims.get("name") if isinstance(claims.get("name"), str) else claims["sub"]
    return Identity(str(claims["sub"])[:200], name[:100], member, role)
