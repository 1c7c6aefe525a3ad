"""Chain parameters set at genesis (and later by association governance): key ``params``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.consensus.context import Context


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    association_fee_bps: int = Field(200, ge=0, le=5_000)
    compute_fee_bps: int = Field(100, ge=0, le=5_000)  # shared by the participants' compute nodes
    dynamic_slope_bps: int = Field(1_000, ge=0, le=100_000)  # +10% per unit of recent demand
    dynamic_max_bps: int = Field(30_000, ge=10_000, le=1_000_000)  # at most 3x the base price
    demand_halflife_s: int = Field(3_600, ge=60, le=30 * 86_400)
    # Each signer's share of a validator's mempool (CheckTx refuses beyond it), so no member can
    # fill it: CometBFT's own bounds (rdx/components.py: 10,000 txs, 128 MiB) are 20x these.
    max_pending_txs_per_signer: int = Field(500, ge=1, le=1_000_000)
    max_pending_bytes_per_signer: int = Field(4 << 20, ge=64 << 10, le=1 << 30)


def get(ctx: Context) -> Params:
    return Params.model_validate(ctx.store.get("params") or {})


def put(ctx: Context, params: Params) -> None:
    ctx.store.set("params", params.model_dump())
