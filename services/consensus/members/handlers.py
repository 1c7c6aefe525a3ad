"""Member transaction handlers: check, mutate through the keeper, emit."""

from __future__ import annotations

from services.common.tx import Code
from services.consensus.context import Context, Rejected
from services.consensus.jobs.keeper import JobsKeeper
from services.consensus.members import messages as m
from services.consensus.members.keeper import ASSOCIATION, DELEGATE, MAX_DELEGATES, MAX_DELEGATION_S, MembersKeeper


def _association_only(ctx: Context, keeper: MembersKeeper) -> None:
    if not keeper.is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the association may do this")


def _new_account(keeper: MembersKeeper, account: str, member: str, kind: str, public_key: str) -> None:
    existing = keeper.account(account)
    keeper.put_account({"id": account, "member": member, "kind": kind, "public_key": public_key,
                        "nonce": existing["nonce"] if existing else 0})


def register(ctx: Context, msg: m.Register) -> None:
    keeper = MembersKeeper(ctx)
    _association_only(ctx, keeper)
    if keeper.member(msg.id) is not None:
        raise Rejected(Code.CONFLICT, f"member {msg.id} already exists")
    admit(ctx, keeper, msg)


def admit(ctx: Context, keeper: MembersKeeper, msg: m.Register) -> None:
    """Shared by the Register tx and genesis."""
    member = {"id": msg.id, "name": msg.name, "roles": sorted(set(msg.roles)), "status": "active",
              "joined_height": ctx.height, "node": None}
    _new_account(keeper, msg.id, msg.id, "member", msg.public_key)
    if msg.node is not None:
        member["node"] = {"account": f"{msg.id}.node", "endpoint": msg.node.endpoint}
        _new_account(keeper, f"{msg.id}.node", msg.id, "node", msg.node.public_key)
    keeper.put_member(member)
    ctx.emit("MemberRegistered", f"member:{msg.id}", member=msg.id, name=msg.name, roles=member["roles"],
             node=member["node"])


def set_node(ctx: Context, msg: m.SetNode) -> None:
    keeper = MembersKeeper(ctx)
    member = keeper.owner_of(ctx.signer)
    account = keeper.account(ctx.signer)
    if member is None or account["kind"] != "member":
        raise Rejected(Code.UNAUTHORIZED, "only a member's own account may set its node")
    member["node"] = {"account": f"{member['id']}.node", "endpoint": msg.node.endpoint}
    _new_account(keeper, f"{member['id']}.node", member["id"], "node", msg.node.public_key)
    keeper.put_member(member)
    ctx.emit("MemberNodeSet", f"member:{member['id']}", member=member["id"], node=member["node"],
             public_key=msg.node.public_key)


def rotate_key(ctx: Context, msg: m.RotateKey) -> None:
    keeper = MembersKeeper(ctx)
    account = keeper.account(ctx.signer)
    account["public_key"] = msg.public_key
    keeper.put_account(account)
    ctx.emit("KeyRotated", f"member:{account['member']}", account=account["id"], public_key=msg.public_key)


def recover(ctx: Context, msg: m.Recover) -> None:
    """The board's answer to a leaked key: the account gets a new key at this height, the old one
    is recorded as revoked, and nothing else changes (the member is not suspended)."""
    keeper = MembersKeeper(ctx)
    _association_only(ctx, keeper)
    account = keeper.account(msg.account)
    if account is None:
        raise Rejected(Code.NOT_FOUND, f"unknown account {msg.account}")
    if account["public_key"] == msg.public_key:
        raise Rejected(Code.CONFLICT, f"account {msg.account} already has that key")
    old = account["public_key"]
    account["public_key"] = msg.public_key
    keeper.put_account(account)
    keeper.revoke_key(msg.account, old, ctx.height, msg.reason)
    ctx.emit("KeyRecovered", f"member:{account['member']}", account=msg.account, member=account["member"],
             public_key=msg.public_key, revoked_key=old, height=ctx.height, reason=msg.reason)


def suspend(ctx: Context, msg: m.Suspend) -> None:
    keeper = MembersKeeper(ctx)
    _association_only(ctx, keeper)
    member = keeper.member(msg.member)
    if member is None:
        raise Rejected(Code.NOT_FOUND, f"unknown member {msg.member}")
    if "association" in member["roles"]:
        raise Rejected(Code.INVALID_STATE, "the association cannot suspend itself")
    member["status"] = "suspended"
    keeper.put_member(member)
    ctx.emit("MemberSuspended", f"member:{msg.member}", member=msg.member, reason=msg.reason)
    JobsKeeper(ctx).abort_touching(f"member:{msg.member}", f"member suspended: {msg.reason}")


def reinstate(ctx: Context, msg: m.Reinstate) -> None:
    keeper = MembersKeeper(ctx)
    _association_only(ctx, keeper)
    member = keeper.member(msg.member)
    if member is None or member["status"] != "suspended":
        raise Rejected(Code.INVALID_STATE, f"member {msg.member} is not suspended")
    member["status"] = "active"
    keeper.put_member(member)
    ctx.emit("MemberReinstated", f"member:{msg.member}", member=msg.member)


def _own_key(ctx: Context, keeper: MembersKeeper, what: str) -> dict:
    """The member whose own account signed this very tx: not a delegate (acting as its member),
    not a node or board key, and not the association (its keys are the board's)."""
    member = keeper.signing_member(ctx.signer)
    if ctx.tx is None or ctx.tx.signer != member["id"]:
        raise Rejected(Code.UNAUTHORIZED, f"only the member's own key may {what}")
    if ASSOCIATION in member["roles"]:
        raise Rejected(Code.UNAUTHORIZED, f"the association does not {what}: its keys are the board's")
    return member


def delegate(ctx: Context, msg: m.Delegate) -> None:
    keeper = MembersKeeper(ctx)
    member = _own_key(ctx, keeper, "delegate")
    account_id = f"{member['id']}{DELEGATE}{msg.label}"
    if len(account_id) > 64:
        raise Rejected(Code.INVALID_PAYLOAD, f"label too long: the account {account_id} would pass 64 characters")
    if not ctx.time < msg.expires_at <= ctx.time + MAX_DELEGATION_S:
        raise Rejected(Code.INVALID_PAYLOAD, f"expires_at must be after the block's time {ctx.time} and at most "
                                             f"{MAX_DELEGATION_S // 86_400} days ahead")
    existing = keeper.account(account_id)
    if existing is not None and existing["status"] == "active" and ctx.time < existing["expires_at"]:
        raise Rejected(Code.CONFLICT, f"delegate {account_id} is active: undelegate it first")
    if existing is None and len(keeper.delegates(member["id"])) >= MAX_DELEGATES:
        raise Rejected(Code.CONFLICT, f"{member['id']} has {MAX_DELEGATES} delegates, the most a member may have "
                                      "(an ended one's label can be delegated again)")
    holder = keeper.key_in_use(msg.public_key)
    if holder is not None:
        raise Rejected(Code.CONFLICT, f"that key is already used by account {holder}")
    powers = sorted(set(msg.powers))
    keeper.put_account({"id": account_id, "member": member["id"], "kind": "delegate", "public_key": msg.public_key,
                        "nonce": existing["nonce"] if existing else 0, "label": msg.label, "powers": powers,
                        "expires_at": msg.expires_at, "status": "active", "height": ctx.height})
    ctx.emit("KeyDelegated", f"member:{member['id']}", member=member["id"], account=account_id,
             public_key=msg.public_key, powers=powers, expires_at=msg.expires_at)


def undelegate(ctx: Context, msg: m.Undelegate) -> None:
    keeper = MembersKeeper(ctx)
    member = _own_key(ctx, keeper, "undelegate")
    account = keeper.account(msg.account)
    if account is None or account["kind"] != "delegate" or account["member"] != member["id"]:
        raise Rejected(Code.NOT_FOUND, f"{msg.account} is not a delegate of {member['id']}")
    if account["status"] != "active":
        raise Rejected(Code.INVALID_STATE, f"delegate {msg.account} was already undelegated")
    account.update(status="ended", ended_height=ctx.height)
    keeper.put_account(account)
    ctx.emit("KeyUndelegated", f"member:{member['id']}", member=member["id"], account=msg.account)


HANDLERS = {
    "members.Register": (m.Register, register),
    "members.SetNode": (m.SetNode, set_node),
    "members.RotateKey": (m.RotateKey, rotate_key),
    "members.Recover": (m.Recover, recover),
    "members.Suspend": (m.Suspend, suspend),
    "members.Reinstate": (m.Reinstate, reinstate),
    "members.Delegate": (m.Delegate, delegate),
    "members.Undelegate": (m.Undelegate, undelegate),
}
