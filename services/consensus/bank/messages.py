from __future__ import annotations

from pydantic import Field

from services.consensus.members.messages import MemberId, Msg

Amount = Field(gt=0, le=10**15)


class Deposit(Msg):
    """Association only: credits enter for money received off chain (``reference`` names it)."""

    to: str = MemberId
    amount: int = Amount
    reference: str = Field(min_length=1, max_length=200)


class Withdraw(Msg):
    """Association only: credits leave for money paid out off chain."""

    member: str = MemberId
    amount: int = Amount
    reference: str = Field(min_length=1, max_length=200)


class Transfer(Msg):
    to: str = MemberId
    amount: int = Amount
    memo: str = Field("", max_length=200)
