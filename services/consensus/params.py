"""Chain parameters set at genesis (and later by association governance): key ``params``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.consensus.context import Context


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    association_fee_bps: int = Field(200, ge=0, le=5_000)
    compute_fee_bps: int = Field(100, ge=0, le=5_000)  # shared by the participants' compute nodes


def get(ctx: Context) -> Params:
    return Params.model_validate(ctx.store.get("params") or {})


def put(ctx: Context, params: Params) -> None:
    ctx.store.set("params", params.model_dump())
