"""Spending the privacy budget. There is no transaction of its own: a noisy job spends from every
budgeted input inside ``jobs.Submit`` (the one hook, :func:`spend_for_job`), so the spend commits
in the very tx that authorises the job -- before any node can run it, let alone release a result --
and a job that would exceed a budget is refused with the tx, nothing spent and nothing held."""

from __future__ import annotations

import re
from typing import Any

from services.common.privacy import BadEpsilon, budget_of, job_epsilon_milli, noisy_job
from services.common.tx import Code
from services.consensus.assets.keeper import AssetsKeeper
from services.consensus.context import Context, Rejected
from services.consensus.privacy.keeper import PrivacyKeeper

QUERY = re.compile(r"privacy-budget/([a-z0-9][a-z0-9.\-]{2,79})/([a-z0-9][a-z0-9\-]{1,39})")


def spend_for_job(ctx: Context, job_id: str, job_type: str, params: dict[str, Any], consumer: str,
                  inputs: list[dict[str, Any]]) -> None:
    """Spends the job's ε from the budget of each of its inputs that declares one; raises Rejected
    (PRIVACY_BUDGET_EXCEEDED, the remaining budget in the message) if any would go over."""
    if not noisy_job(job_type, params):
        return
    assets, keeper = AssetsKeeper(ctx), PrivacyKeeper(ctx)
    for item in inputs:
        budget = budget_of(assets.get(item["asset"]))
        if budget is None:
            continue
        try:
            epsilon = job_epsilon_milli(params)
        except BadEpsilon as exc:
            raise Rejected(Code.INVALID_PAYLOAD, str(exc)) from None
        spent = keeper.spent(item["asset"], consumer, budget, ctx.time)
        if spent + epsilon > budget.epsilon_milli:
            raise Rejected(Code.PRIVACY_BUDGET_EXCEEDED,
                           f"job {job_id} would spend epsilon_milli {epsilon} on {item['asset']}, whose privacy "
                           f"budget for {consumer} has {budget.epsilon_milli - spent} of {budget.epsilon_milli} "
                           f"left until {ctx.time - ctx.time % budget.period_s + budget.period_s}")
        keeper.spend(item["asset"], consumer, budget, ctx.time, epsilon)


def query(ctx: Context, path: str) -> dict[str, Any] | None:
    """``privacy-budget/<asset>/<consumer>``: the listing's budget, and what the consumer spent and
    has left of it in the current period; None for an unknown asset or a malformed path."""
    match = QUERY.fullmatch(path)
    if match is None:
        return None
    asset = AssetsKeeper(ctx).get(match[1])
    if asset is None:
        return None
    return PrivacyKeeper(ctx).account(asset, match[2], budget_of(asset), ctx.time)
