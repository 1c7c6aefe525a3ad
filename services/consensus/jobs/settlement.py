"""How a completed job's escrow is split: pure integer arithmetic, the same on every validator.

1. Each input's charge follows the price fixed for it when the job was submitted (free; fixed per
   job; per record the provider attested, up to the listing's declared row count; a dynamic
   price resolved at submission) — or, for a subscription, the pass if the grant has none at
   completion (services/consensus/pricing.py).
2. The total charged is the sum, capped at the job's max price: the consumer is never charged
   more than it agreed. Submission requires the max price to cover every input's most possible
   charge, so for jobs submitted since that rule the cap never bites.
3. Out of the total: the association's fee (``association_fee_bps``) and the compute operators'
   fee: each participant (each runs its own node) gets ``floor(total * compute_fee_bps / 10^4 /
   participants)``.
4. The rest is the providers' pool, shared in proportion to their charge.
5. Rounding: every share is floored; the few credits the flooring of provider shares leaves go to
   the association.
   So the payouts add up to the total exactly, nothing is created or lost, and no party gets
   more than its exact share.
6. The consumer's refund is the escrow minus the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def input_charge(price: dict, records: int) -> int:
    if price["model"] == "fixed":
        return price["amount"]
    if price["model"] == "per_record":  # capped at the row count the listing declared (jobs since it was)
        return price["amount"] * min(records, price.get("max_records", records))
    return 0


@dataclass(frozen=True)
class Settlement:
    total: int
    payouts: dict[str, int]  # member -> credits, summing to ``total``
    charges: dict[str, int]  # asset -> its uncapped charge
    association_fee: int
    compute_fees: dict[str, int] = field(default_factory=dict)


def settle(charges: dict[str, int], owners: dict[str, str], max_price: int, participants: list[str],
           association: str, association_fee_bps: int, compute_fee_bps: int) -> Settlement:
    """``charges`` by asset, ``owners`` asset -> provider member, ``participants`` the job's members."""
    wanted = sum(charges.values())
    total = min(wanted, max_price)
    if total == 0:
        return Settlement(0, {}, dict(charges), 0)
    per_operator = total * compute_fee_bps // 10_000 // len(participants)
    compute_fees = {member: per_operator for member in sorted(participants)}
    provider_pool = total - total * association_fee_bps // 10_000 - per_operator * len(participants)
    payouts = dict(compute_fees)
    for asset, charge in sorted(charges.items()):
        payouts[owners[asset]] = payouts.get(owners[asset], 0) + provider_pool * charge // wanted
    association_fee = total - sum(payouts.values())  # its fee plus what flooring left
    payouts[association] = payouts.get(association, 0) + association_fee
    return Settlement(total, {m: a for m, a in sorted(payouts.items()) if a}, dict(charges), association_fee,
                      compute_fees)
