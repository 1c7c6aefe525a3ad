"""The only code that moves credits (prefix ``bank/``). Every movement emits an event naming
its cause (a deposit, a withdrawal, a transfer or a job), so each is traceable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.tx import Code
from services.consensus.context import Context, Rejected

if TYPE_CHECKING:  # settlement is computed by the jobs domain; the bank only moves the credits
    from services.consensus.jobs.settlement import Settlement

MAX_SUPPLY = 2**63 - 1
"""All credits in existence at most: so every balance, escrow and total fits an int64 for any
reader of the chain's state (SQLite, Go, protobuf), whatever number of deposits made it."""


class BankKeeper:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.store = ctx.store

    def balance(self, member: str) -> int:
        return self.store.get(f"bank/balance/{member}") or 0

    def _set(self, member: str, amount: int) -> None:
        assert amount >= 0
        self.store.set(f"bank/balance/{member}", amount)

    @property
    def supply(self) -> int:
        return self.store.get("bank/supply") or 0

    def mint(self, member: str, amount: int, reference: str) -> None:
        if self.supply + amount > MAX_SUPPLY:
            raise Rejected(Code.INVALID_STATE, f"a deposit of {amount} would take the credit supply past {MAX_SUPPLY}")
        self._set(member, self.balance(member) + amount)
        self.store.set("bank/supply", self.supply + amount)
        self.ctx.emit("CreditsDeposited", f"member:{member}", member=member, amount=amount, reference=reference)

    def burn(self, member: str, amount: int, reference: str) -> None:
        self._debit(member, amount)
        self.store.set("bank/supply", self.supply - amount)
        self.ctx.emit("CreditsWithdrawn", f"member:{member}", member=member, amount=amount, reference=reference)

    def _debit(self, member: str, amount: int) -> None:
        have = self.balance(member)
        if have < amount:
            raise Rejected(Code.INSUFFICIENT_FUNDS, f"{member} has {have} credits, {amount} needed")
        self._set(member, have - amount)

    def transfer(self, sender: str, to: str, amount: int, memo: str) -> None:
        self._debit(sender, amount)
        self._set(to, self.balance(to) + amount)
        self.ctx.emit("CreditsTransferred", f"member:{sender}", sender=sender, to=to, amount=amount, memo=memo)

    # -- escrow -----------------------------------------------------------------------------------
    def hold(self, job: str, consumer: str, amount: int) -> None:
        self._debit(consumer, amount)
        self.store.set(f"bank/escrow/{job}", {"consumer": consumer, "amount": amount})
        self.ctx.emit("EscrowHeld", f"job:{job}", job=job, consumer=consumer, amount=amount)

    def escrow(self, job: str) -> dict | None:
        return self.store.get(f"bank/escrow/{job}")

    def settle(self, job: str, outcome: "Settlement") -> int:
        """Pay the settlement out of the job's escrow and refund the rest; returns the refund."""
        held = self.escrow(job)
        payouts = outcome.payouts
        paid = sum(payouts.values())
        assert held is not None and 0 <= paid <= held["amount"], "settlement exceeds escrow"
        for member, amount in sorted(payouts.items()):
            if amount:
                self._set(member, self.balance(member) + amount)
        refund = held["amount"] - paid
        self._set(held["consumer"], self.balance(held["consumer"]) + refund)
        self.store.delete(f"bank/escrow/{job}")
        self.ctx.emit("JobSettled", f"job:{job}", job=job, consumer=held["consumer"], escrow=held["amount"],
                      charged=paid, refunded=refund, payouts=dict(sorted(payouts.items())),
                      charges=outcome.charges, association_fee=outcome.association_fee,
                      compute_fees=outcome.compute_fees)
        return refund

    def totals(self) -> tuple[int, int]:
        """(sum of balances, sum of escrow): with supply, what the conservation invariant checks."""
        balances = sum(v for _, v in self.store.scan("bank/balance/"))
        escrow = sum(v["amount"] for _, v in self.store.scan("bank/escrow/"))
        return balances, escrow
