"""The only code that reads or writes grants (prefixes ``access/``, ``access-by-asset/``, ``access-expiry/``)."""

from __future__ import annotations

from typing import Any

from services.consensus.context import Context

OPEN = ("pending", "granted")


class AccessKeeper:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def get(self, grant_id: str) -> dict[str, Any] | None:
        return self.store.get(f"access/{grant_id}")

    def put(self, grant: dict[str, Any]) -> None:
        self.store.set(f"access/{grant['id']}", grant)

    def create(self, grant: dict[str, Any]) -> None:
        self.put(grant)
        self.store.set(f"access-by-asset/{grant['asset']}/{grant['id']}", 1)
        self.store.set(f"access-expiry/{grant['expires_at']:012d}/{grant['id']}", 1)

    def close(self, grant: dict[str, Any], status: str, reason: str) -> None:
        """Every way a grant ends: rejected, revoked, expired. Emits the matching event."""
        grant["status"] = status
        grant["closed_reason"] = reason
        self.put(grant)
        self.store.delete(f"access-expiry/{grant['expires_at']:012d}/{grant['id']}")
        self.ctx.emit(f"Access{status.capitalize()}", f"access:{grant['id']}", grant=grant["id"],
                      asset=grant["asset"], consumer=grant["consumer"], reason=reason)

    def for_asset(self, asset_id: str) -> list[dict[str, Any]]:
        return [self.get(key.rsplit("/", 1)[1]) for key, _ in self.store.scan(f"access-by-asset/{asset_id}/")]

    def revoke_for_asset(self, asset_id: str, reason: str) -> None:
        """No grant outlives its asset."""
        for grant in self.for_asset(asset_id):
            if grant["status"] in OPEN:
                self.close(grant, "revoked", reason)

    def expire_due(self, now: int) -> None:
        for key, _ in list(self.store.scan("access-expiry/")):
            _, at, grant_id = key.split("/")
            if int(at) > now:
                break
            grant = self.get(grant_id)
            if grant["status"] in OPEN:
                self.close(grant, "expired", "expired")

    def all(self) -> list[dict[str, Any]]:
        return [g for _, g in self.store.scan("access/")]
