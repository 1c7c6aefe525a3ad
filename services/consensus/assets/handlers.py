"""Listing handlers: only a provider lists, only the owner changes its listing; every change is a
new version and the history stays. Delisting or suspending ends the asset's grants and jobs."""

from __future__ import annotations

from services.common.tx import Code
from services.consensus.access.keeper import AccessKeeper
from services.consensus.assets import messages as m
from services.consensus.assets.keeper import AssetsKeeper
from services.consensus.context import Context, Rejected
from services.consensus.jobs.keeper import JobsKeeper
from services.consensus.members.keeper import MembersKeeper

LISTING_FIELDS = ("level", "operations", "commitment", "price", "min_group_size", "metadata")
STORED = {*LISTING_FIELDS, "privacy_budget"}  # stored, not in the events: absent means no budget


def _record(ctx: Context, assets: AssetsKeeper, asset: dict, event: str) -> None:
    asset["tx_hash"] = ctx.tx.hash if ctx.tx else None
    asset["height"] = ctx.height
    assets.put(asset)
    assets.put_version(asset)
    ctx.emit(event, f"asset:{asset['id']}", asset=asset["id"], owner=asset["owner"], version=asset["version"],
             status=asset["status"], tx_hash=asset["tx_hash"], **{k: asset[k] for k in LISTING_FIELDS})


def list_asset(ctx: Context, msg: m.List) -> None:
    provider = MembersKeeper(ctx).signing_member(ctx.signer, "provider")
    assets = AssetsKeeper(ctx)
    if assets.get(msg.id) is not None:
        raise Rejected(Code.CONFLICT, f"asset {msg.id} already exists")
    asset = {"id": msg.id, "owner": provider["id"], "version": 1, "status": "listed",
             **msg.model_dump(include=STORED, exclude_none=True)}
    _record(ctx, assets, asset, "AssetListed")


def _owned(ctx: Context, asset_id: str) -> tuple[AssetsKeeper, dict]:
    assets = AssetsKeeper(ctx)
    asset = assets.get(asset_id)
    if asset is None:
        raise Rejected(Code.NOT_FOUND, f"unknown asset {asset_id}")
    member = MembersKeeper(ctx).signing_member(ctx.signer)
    if member["id"] != asset["owner"]:
        raise Rejected(Code.UNAUTHORIZED, f"only {asset['owner']} may change asset {asset_id}")
    return assets, asset


def update(ctx: Context, msg: m.Update) -> None:
    assets, asset = _owned(ctx, msg.id)
    if asset["status"] != "listed":
        raise Rejected(Code.INVALID_STATE, f"asset {msg.id} is {asset['status']}")
    asset.pop("privacy_budget", None)
    asset.update(msg.model_dump(include=STORED, exclude_none=True), version=asset["version"] + 1)
    _record(ctx, assets, asset, "AssetUpdated")


def _end(ctx: Context, assets: AssetsKeeper, asset: dict, status: str, reason: str, event: str) -> None:
    asset.update(status=status, version=asset["version"] + 1, reason=reason)
    _record(ctx, assets, asset, event)
    AccessKeeper(ctx).revoke_for_asset(asset["id"], f"asset {status}: {reason}")
    JobsKeeper(ctx).abort_touching(f"asset:{asset['id']}", f"asset {status}: {reason}")


def delist(ctx: Context, msg: m.Delist) -> None:
    assets, asset = _owned(ctx, msg.id)
    if asset["status"] == "delisted":
        raise Rejected(Code.INVALID_STATE, f"asset {msg.id} is already delisted")
    _end(ctx, assets, asset, "delisted", msg.reason, "AssetDelisted")


def suspend(ctx: Context, msg: m.Suspend) -> None:
    """The kill switch on one asset: its owner or the association."""
    assets = AssetsKeeper(ctx)
    asset = assets.get(msg.id)
    if asset is None:
        raise Rejected(Code.NOT_FOUND, f"unknown asset {msg.id}")
    members = MembersKeeper(ctx)
    if members.signing_member(ctx.signer)["id"] != asset["owner"] and not members.is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the owner or the association may suspend an asset")
    if asset["status"] != "listed":
        raise Rejected(Code.INVALID_STATE, f"asset {msg.id} is {asset['status']}")
    _end(ctx, assets, asset, "suspended", msg.reason, "AssetSuspended")


HANDLERS = {
    "assets.List": (m.List, list_asset),
    "assets.Update": (m.Update, update),
    "assets.Delist": (m.Delist, delist),
    "assets.Suspend": (m.Suspend, suspend),
}
