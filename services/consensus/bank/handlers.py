from __future__ import annotations

from services.common.tx import Code
from services.consensus.bank import messages as m
from services.consensus.bank.keeper import BankKeeper
from services.consensus.context import Context, Rejected
from services.consensus.members.keeper import MembersKeeper


def _association(ctx: Context) -> None:
    if not MembersKeeper(ctx).is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the association may issue or withdraw credits")


def _known(ctx: Context, member: str) -> None:
    if MembersKeeper(ctx).member(member) is None:
        raise Rejected(Code.NOT_FOUND, f"unknown member {member}")


def deposit(ctx: Context, msg: m.Deposit) -> None:
    _association(ctx)
    _known(ctx, msg.to)
    BankKeeper(ctx).mint(msg.to, msg.amount, msg.reference)


def withdraw(ctx: Context, msg: m.Withdraw) -> None:
    _association(ctx)
    _known(ctx, msg.member)
    BankKeeper(ctx).burn(msg.member, msg.amount, msg.reference)


def transfer(ctx: Context, msg: m.Transfer) -> None:
    sender = MembersKeeper(ctx).signing_member(ctx.signer)
    _known(ctx, msg.to)
    BankKeeper(ctx).transfer(sender["id"], msg.to, msg.amount, msg.memo)


HANDLERS = {
    "bank.Deposit": (m.Deposit, deposit),
    "bank.Withdraw": (m.Withdraw, withdraw),
    "bank.Transfer": (m.Transfer, transfer),
}
