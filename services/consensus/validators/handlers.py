"""Validator-set handlers: the association's ``validators`` power, exercised by its board by
default (governance/powers.py decides who may send them)."""

from __future__ import annotations

from services.common.tx import Code
from services.consensus.context import Context, Rejected
from services.consensus.members.keeper import MembersKeeper
from services.consensus.validators import messages as m
from services.consensus.validators.keeper import ValidatorsKeeper


def _association_only(ctx: Context) -> None:
    if not MembersKeeper(ctx).is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the association may change the validator set")


def update(ctx: Context, msg: m.Update) -> None:
    _association_only(ctx)
    keeper = ValidatorsKeeper(ctx)
    for change in msg.changes:
        keeper.change(change.pub_key, change.power, change.name)


def rotate(ctx: Context, msg: m.Rotate) -> None:
    _association_only(ctx)
    keeper = ValidatorsKeeper(ctx)
    old = keeper.get(msg.old_pub_key)
    if old is None:
        raise Rejected(Code.NOT_FOUND, "the old key is not a validator's")
    if keeper.get(msg.new_pub_key) is not None:
        raise Rejected(Code.CONFLICT, "the new key is already a validator's")
    keeper.change(msg.old_pub_key, 0)
    keeper.change(msg.new_pub_key, old["power"], old["name"])


HANDLERS = {
    "validators.Update": (m.Update, update),
    "validators.Rotate": (m.Rotate, rotate),
}
