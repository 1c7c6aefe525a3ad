"""The only code that reads or writes listings (prefix ``assets/``)."""

from __future__ import annotations

from typing import Any

from services.consensus.context import Context


class AssetsKeeper:
    def __init__(self, ctx: Context):
        self.store = ctx.store

    def get(self, asset_id: str) -> dict[str, Any] | None:
        return self.store.get(f"assets/{asset_id}")

    def put(self, asset: dict[str, Any]) -> None:
        self.store.set(f"assets/{asset['id']}", asset)

    def version(self, asset_id: str, version: int) -> dict[str, Any] | None:
        return self.store.get(f"asset-versions/{asset_id}/{version:08d}")

    def put_version(self, asset: dict[str, Any]) -> None:
        self.store.set(f"asset-versions/{asset['id']}/{asset['version']:08d}", asset)

    def usable(self, asset_id: str) -> dict[str, Any] | None:
        """The asset if it can be used by a job now: listed, not suspended."""
        asset = self.get(asset_id)
        return asset if asset and asset["status"] == "listed" else None

    def all(self) -> list[dict[str, Any]]:
        return [a for _, a in self.store.scan("assets/")]
