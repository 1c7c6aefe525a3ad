"""Sign-in sessions, held by the portal process (one instance: see docs/portal.md for the limit).

The browser holds only a random id in an HttpOnly, SameSite=Lax cookie; the session (who, which
member and role, its CSRF token) stays here and ends ``ttl_s`` after sign-in, whatever the browser
does. Lax, not Strict: the IdP's redirect back to /callback is a cross-site top-level GET, and it
must carry the cookie of the sign-in that started it. Every state-changing request is a POST that
must carry the session's CSRF token (a hidden form field) and come from this portal's origin.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

SESSION_COOKIE = "rdx_portal"
LOGIN_COOKIE = "rdx_portal_login"
LOGIN_TTL_S = 600  # a sign-in must come back from the IdP within ten minutes


@dataclass
class Session:
    subject: str
    name: str
    member: str
    role: str
    expires_at: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), token.encode())


@dataclass
class PendingLogin:
    state: str
    nonce: str
    verifier: str
    next_path: str
    expires_at: float


class Store:
    """Bounded: the oldest entry goes when a new one would pass ``limit`` (a flood of sign-in
    starts cannot grow the process without bound; it can only push out other unfinished ones)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: OrderedDict[str, object] = OrderedDict()

    def put(self, value) -> str:
        key = secrets.token_urlsafe(32)
        self._items[key] = value
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return key

    def get(self, key: str | None):
        if not key or len(key) > 100:
            return None
        value = self._items.get(key)
        if value is not None and value.expires_at <= time.time():
            self._items.pop(key, None)
            return None
        return value

    def pop(self, key: str | None):
        value = self.get(key)
        if value is not None:
            self._items.pop(key, None)
        return value

    def __len__(self) -> int:
        return len(self._items)


def safe_next(path: str | None) -> str:
    """Only a path on this portal: never another origin (``//host``, ``/\\host``, a scheme)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path or len(path) > 2000:
        return "/search"
    if any(ord(c) < 0x20 for c in path):
        return "/search"
    return path
