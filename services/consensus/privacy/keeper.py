"""The only code that reads or writes privacy budgets (prefix ``privacy/``).

``privacy/<asset>/<consumer>``: ``{"period_start", "spent_milli"}`` -- what the consumer spent on
the asset in the period that starts at ``period_start`` (block time). A record of an earlier period
counts as nothing spent: the budget renews at each period's start, with no sweep needed.
"""

from __future__ import annotations

from typing import Any

from services.common.privacy import PrivacyBudget, period_start
from services.consensus.context import Context


class PrivacyKeeper:
    def __init__(self, ctx: Context):
        self.store = ctx.store

    def spent(self, asset: str, consumer: str, budget: PrivacyBudget, now: int) -> int:
        record = self.store.get(f"privacy/{asset}/{consumer}")
        if record is None or record["period_start"] != period_start(now, budget):
            return 0
        return int(record["spent_milli"])

    def spend(self, asset: str, consumer: str, budget: PrivacyBudget, now: int, epsilon_milli: int) -> int:
        """Adds ``epsilon_milli`` to the current period's spend; returns the new total (unchecked)."""
        total = self.spent(asset, consumer, budget, now) + epsilon_milli
        self.store.set(f"privacy/{asset}/{consumer}", {"period_start": period_start(now, budget), "spent_milli": total})
        return total

    def account(self, asset: dict[str, Any], consumer: str, budget: PrivacyBudget | None, now: int) -> dict[str, Any]:
        """The budget as members and the association see it (the ABCI query ``privacy-budget/``)."""
        out: dict[str, Any] = {"asset": asset["id"], "version": asset["version"], "consumer": consumer,
                               "budget": None if budget is None else budget.model_dump()}
        if budget is None:
            return out
        spent = self.spent(asset["id"], consumer, budget, now)
        start = period_start(now, budget)
        return {**out, "period_start": start, "period_end": start + budget.period_s, "spent_milli": spent,
                "remaining_milli": max(budget.epsilon_milli - spent, 0)}
