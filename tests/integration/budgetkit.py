"""Test helpers for the privacy budget (issue 17) on a jobkit network."""

from __future__ import annotations

FIELDS = ("level", "operations", "commitment", "price", "min_group_size", "metadata")


async def set_budget(net, asset: str, epsilon_milli: int, period_s: int = 86_400) -> None:
    """The owner updates its listing (a new version) to declare a privacy budget."""
    listing = await net.chain.query(f"/assets/{asset}")
    await net.tx(net.ids[listing["owner"]], "assets.Update", {
        "id": asset, **{k: listing[k] for k in FIELDS},
        "privacy_budget": {"epsilon_milli": epsilon_milli, "period_s": period_s}})


async def budget(net, asset: str, consumer: str) -> dict:
    return await net.chain.query(f"/privacy-budget/{asset}/{consumer}")
