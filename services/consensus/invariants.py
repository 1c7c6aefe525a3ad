"""Invariants that must hold after every block (run by the tests after each block, and by
`python -m services.consensus.invariants <chain.sqlite>` against a live validator's state)."""

from __future__ import annotations

import sys
from pathlib import Path

from services.consensus.access.keeper import OPEN, AccessKeeper
from services.consensus.assets.keeper import AssetsKeeper
from services.consensus.bank.keeper import BankKeeper
from services.consensus.context import Context
from services.consensus.governance.keeper import OPEN as GOVERNANCE_OPEN
from services.consensus.governance.keeper import PROPOSALS, GovernanceKeeper
from services.consensus.members.keeper import MembersKeeper
from services.consensus.validators.keeper import BLOCK as VALIDATORS_BLOCK
from services.consensus.validators.keeper import ValidatorsKeeper
from services.consensus.jobs.keeper import JobsKeeper
from services.consensus.state import Database, Overlay


def violations(store: Overlay) -> list[str]:
    ctx = Context(store=store, height=0, time=0)
    bank, jobs = BankKeeper(ctx), JobsKeeper(ctx)
    found = []
    balances, escrow = bank.totals()
    if balances + escrow != bank.supply:
        found.append(f"credits not conserved: balances {balances} + escrow {escrow} != supply {bank.supply}")
    if any(v < 0 for _, v in store.scan("bank/balance/")):
        found.append("a balance is negative")
    running = {j["id"]: j for j in jobs.all() if j["status"] in ("running", "locked")}  # escrow held
    held = {key.rsplit("/", 1)[1]: v for key, v in store.scan("bank/escrow/")}
    if set(held) != set(running):
        found.append(f"escrow held for {sorted(held)} but running jobs are {sorted(running)}")
    for job_id, hold in held.items():
        if job_id in running and hold["amount"] != running[job_id]["max_price"]:
            found.append(f"escrow of job {job_id} is {hold['amount']}, its hold was {running[job_id]['max_price']}")
    assets = AssetsKeeper(ctx)
    for grant in AccessKeeper(ctx).all():
        asset = assets.get(grant["asset"])
        if grant["status"] in OPEN and (asset is None or asset["status"] != "listed"):
            found.append(f"grant {grant['id']} outlives asset {grant['asset']}")
    return found + governance_violations(ctx)


def governance_violations(ctx: Context) -> list[str]:
    """The board can act (1 <= k <= n, every seat an account of the association), the open-proposal
    index is exactly the open proposals, and a recorded validator set is never empty."""
    found = []
    members = MembersKeeper(ctx)
    board = GovernanceKeeper(ctx).board()
    if not 1 <= board["threshold"] <= len(board["seats"]):
        found.append(f"board threshold {board['threshold']} of {len(board['seats'])} seats")
    for seat in board["seats"]:
        account = members.account(seat)
        if account is None or account["member"] != board["association"]:
            found.append(f"board seat {seat} is not an account of the association")
    indexed = {key.rsplit("/", 1)[1]: int(key.split("/")[2]) for key, _ in ctx.store.scan(GOVERNANCE_OPEN)}
    open_ = {p["id"]: p["expires_at"] for _, p in ctx.store.scan(PROPOSALS) if p["status"] == "open"}
    if indexed != open_:
        found.append(f"open-proposal index {sorted(indexed)} != open proposals {sorted(open_)}")
    validators = ValidatorsKeeper(ctx)
    if validators.recorded() and not validators.all():
        found.append("the recorded validator set is empty")
    if ctx.store.get(VALIDATORS_BLOCK) is not None:
        found.append("a block's validator changes were committed")
    return found


if __name__ == "__main__":
    problems = violations(Overlay(Database(Path(sys.argv[1]))))
    print("\n".join(problems) or "all invariants hold")
    sys.exit(1 if problems else 0)
