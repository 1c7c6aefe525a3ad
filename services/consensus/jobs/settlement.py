"""How a completed job's escrow is split: pure integer arithmetic, the same on every validator.

Each provider's charge follows its asset's price model (free, fixed per job, or per record it
attested). The total is capped at the job's max price (the consumer is never charged more
than it agreed); if the cap bites, charges shrink pro rata. The association's fee (basis
points, from chain params) comes out of the total; the rest goes to providers in proportion
to their charge. Rounding: every share is floored, and the few credits left by flooring go
to the association, so nothing is created or lost and no provider gets more than its share.
"""

from __future__ import annotations


def provider_charge(price: dict, records: int) -> int:
    if price["model"] == "fixed":
        return price["amount"]
    if price["model"] == "per_record":
        return price["amount"] * records
    return 0


def split(charges: dict[str, int], max_price: int, association: str, fee_bps: int) -> dict[str, int]:
    """Payouts by member id; their sum is the amount charged (at most ``max_price``)."""
    wanted = sum(charges.values())
    total = min(wanted, max_price)
    if total == 0:
        return {}
    fee = total * fee_bps // 10_000
    pool = total - fee
    payouts = {member: pool * charge // wanted for member, charge in charges.items()}
    payouts[association] = payouts.get(association, 0) + total - sum(payouts.values())
    return {member: amount for member, amount in payouts.items() if amount}
