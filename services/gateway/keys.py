"""Per-member API keys: ``rdx_<key id>.<secret>``; only a SHA-256 of the secret is stored.

Plain SHA-256 suffices (no bcrypt/argon2): the secret is 32 random bytes, not a password, so
there is nothing to brute-force; a slow hash would only slow every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from services.common.policy import ROLES
from services.gateway.db import Database

KEY_ID = re.compile(r"[a-z0-9_]{1,40}")  # what create() makes (hex), and the bootstrap token's "bootstrap"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    member: str
    role: str
    created_at: float
    revoked_at: float | None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split(token: str) -> tuple[str, str] | None:
    if not token.startswith("rdx_") or "." not in token:
        return None
    key_id, secret = token[4:].split(".", 1)
    return (key_id, secret) if KEY_ID.fullmatch(key_id) and secret else None


class KeyStore:
    """API keys in the gateway's database: a SQLite file for one gateway, PostgreSQL shared by
    replicas, so a key made or revoked on one replica holds on every other at once."""

    def __init__(self, db: Database):
        self.db = db

    @classmethod
    async def open(cls, db: Database) -> "KeyStore":
        async with db.locked("schema"):  # replicas starting together do not race on CREATE TABLE
            await db.execute("""CREATE TABLE IF NOT EXISTS api_keys (
                key_id TEXT PRIMARY KEY, member TEXT NOT NULL, role TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION)""")
        return cls(db)

    async def create(self, member: str, role: str) -> tuple[ApiKey, str]:
        """Returns the key and its token; the token is shown once and never stored."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role}")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        now = time.time()
        await self.db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                              (key_id, member, role, _digest(secret), now))
        return ApiKey(key_id, member, role, now, None), f"rdx_{key_id}.{secret}"

    async def verify(self, token: str) -> ApiKey | None:
        parts = split(token)
        if parts is None:
            return None
        rows = await self.db.fetch("SELECT key_id, member, role, created_at, revoked_at, secret_sha256 FROM api_keys "
                                   "WHERE key_id = ?", (parts[0],))
        row = rows[0] if rows else None
        if row is None or row[4] is not None or not hmac.compare_digest(row[5], _digest(parts[1])):
            return None
        return ApiKey(*row[:5])

    async def get(self, key_id: str) -> ApiKey | None:
        rows = await self.db.fetch("SELECT key_id, member, role, created_at, revoked_at FROM api_keys "
                                   "WHERE key_id = ?", (key_id,))
        return ApiKey(*rows[0]) if rows else None

    async def revoke(self, key_id: str) -> None:
        await self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                              (time.time(), key_id))

    async def list(self, member: str | None = None) -> list[ApiKey]:
        sql = "SELECT key_id, member, role, created_at, revoked_at FROM api_keys"
        rows = await self.db.fetch(sql + (" WHERE member = ?" if member else "") + " ORDER BY created_at",
                                   (member,) if member else ())
        return [ApiKey(*r) for r in rows]
