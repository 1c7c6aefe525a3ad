"""What a job input costs, decided on chain so every validator charges the same and a consumer
can quote it before submitting (ABCI query ``/quote/<asset>/<records>``).

- free, fixed, per_record: as listed.
- subscription: ``amount`` buys a pass for ``period_s`` bound to one grant. A job is charged the
  pass when it completes and the grant has no valid pass then; jobs completing while a pass is
  valid cost nothing. Charging at completion (not at submission) means a failed or aborted job
  is refunded in full with nothing to undo, and two jobs racing for the same pass pay it once.
- dynamic: ``amount`` times a demand multiplier. Demand is an exponentially decaying count of
  the asset's jobs (half-life ``demand_halflife_s``, by block time); the multiplier is
  ``1 + slope x demand``, bounded to ``[1, max]``. Integer fixed point (micro-units) with a
  piecewise-linear decay between whole half-lives: no floats, so the result is bit-identical on
  every validator.

A job's ``max_price`` must cover what its inputs can cost (``cover``), checked at submission:
free 0; fixed its amount; dynamic the price resolved then; per_record its amount times the
listing's declared ``row_count`` (the charge is capped there); subscription the pass, unless
the grant's pass is valid past the job's deadline. So the cap at settlement (``min(charges,
max_price)``) never cuts a provider's pay or a subscription pass below its price.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.consensus import params as chain_params
from services.consensus.context import Context
from services.consensus.jobs.settlement import input_charge

if TYPE_CHECKING:
    from services.consensus.access.keeper import AccessKeeper

MICRO = 1_000_000


def decayed(demand: int, since: int, now: int, halflife: int) -> int:
    """``demand * 2^-(now-since)/halflife``: whole half-lives by shifting, the rest linearly."""
    elapsed = max(0, now - since)
    halvings, rest = divmod(elapsed, halflife)
    if halvings >= 63:
        return 0
    demand >>= halvings
    return demand * (2 * halflife - rest) // (2 * halflife)


def multiplier_bps(demand: int, p: chain_params.Params) -> int:
    return min(p.dynamic_max_bps, 10_000 + p.dynamic_slope_bps * demand // MICRO)


class PricingKeeper:
    """Demand per dynamically priced asset (prefix ``pricing/``)."""

    def __init__(self, ctx: Context):
        self.ctx, self.store = ctx, ctx.store
        self.params = chain_params.get(ctx)

    def demand(self, asset_id: str, now: int) -> int:
        state = self.store.get(f"pricing/{asset_id}") or {"demand": 0, "at": now}
        return decayed(state["demand"], state["at"], now, self.params.demand_halflife_s)

    def dynamic_price(self, asset: dict, now: int) -> int:
        return asset["price"]["amount"] * multiplier_bps(self.demand(asset["id"], now), self.params) // 10_000

    def record_use(self, asset: dict) -> None:
        now = self.ctx.time
        demand = self.demand(asset["id"], now) + MICRO
        self.store.set(f"pricing/{asset['id']}", {"demand": demand, "at": now})
        self.ctx.emit("DynamicPriceChanged", f"asset:{asset['id']}", asset=asset["id"], demand_micro=demand,
                      price=asset["price"]["amount"] * multiplier_bps(demand, self.params) // 10_000)

    def resolve(self, asset: dict, grant: dict) -> dict[str, Any]:
        """The price this job input is charged at, fixed at submission (what settlement uses)."""
        price, now = asset["price"], self.ctx.time
        if price["model"] == "dynamic":
            charged = {"model": "fixed", "amount": self.dynamic_price(asset, now)}
            self.record_use(asset)
            return charged
        if price["model"] == "per_record":
            return {**price, "max_records": asset["metadata"]["row_count"]}
        return dict(price)

    def cover(self, price: dict, grant: dict, deadline: int) -> int:
        """The most an input at its resolved ``price`` can be charged by a job ending by ``deadline``."""
        if price["model"] == "subscription":
            return 0 if grant.get("paid_until", 0) > deadline else price["amount"]
        if price["model"] == "per_record":
            return price["amount"] * price["max_records"]
        return input_charge(price, 0)

    def charge(self, item: dict, records: int, access: "AccessKeeper") -> int:
        """An input's charge at completion; buys the grant's subscription pass if it has none."""
        price = item["price"]
        if price["model"] == "subscription":
            grant = access.get(item["grant"])
            if grant.get("paid_until", 0) > self.ctx.time:
                return 0
            grant["paid_until"] = self.ctx.time + price["period_s"]
            access.put(grant)
            return price["amount"]
        return input_charge(price, records)

    def quote(self, asset: dict, records: int | None, now: int) -> int:
        """The charge for ``records`` records now; with ``records`` None, what ``max_price`` must
        cover for this input (the whole declared row count, a subscription's whole pass)."""
        price = asset["price"]
        if price["model"] == "dynamic":
            return self.dynamic_price(asset, now)
        if price["model"] in ("fixed", "subscription"):
            return price["amount"]  # a subscription: at most the pass
        if price["model"] == "per_record":
            rows = asset["metadata"]["row_count"]
            return price["amount"] * (rows if records is None else min(records, rows))
        return 0
