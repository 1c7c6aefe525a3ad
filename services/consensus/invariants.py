"""Invariants that must hold after every block (run by the tests after each block, and by
`python -m services.consensus.invariants <chain.sqlite>` against a live validator's state)."""

from __future__ import annotations

import sys
from pathlib import Path

from services.consensus.access.keeper import OPEN, AccessKeeper
from services.consensus.assets.keeper import AssetsKeeper
from services.consensus.bank.keeper import BankKeeper
from services.consensus.context import Context
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
    running = {j["id"]: j for j in jobs.all() if j["status"] == "running"}
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
    return found


if __name__ == "__main__":
    problems = violations(Overlay(Database(Path(sys.argv[1]))))
    print("\n".join(problems) or "all invariants hold")
    sys.exit(1 if problems else 0)
