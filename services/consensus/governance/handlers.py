"""Governance: the association's policy, its board (k-of-n proposals and approvals), chain
parameters and app upgrades; and ``authorize``, the check every transaction passes before its
handler, which decides whether a transaction in the association's name needs the board."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from services.common.policy import Policy, PolicyError
from services.common.tx import Code
from services.consensus import params as chain_params
from services.consensus.context import Context, Rejected
from services.consensus.governance import messages as m
from services.consensus.governance.keeper import GovernanceKeeper
from services.consensus.governance.powers import ASSOCIATION_ONLY, BOARD, BY_TYPE, holder
from services.consensus.members.keeper import ASSOCIATION, MembersKeeper

Handler = tuple[type[BaseModel], Callable[[Context, Any], None]]
MAX_OPEN_PROPOSALS = 64  # bounds the expiry sweep and what a board seat can make every validator store
BOARD_TXS = ("board.Propose", "board.Approve")


def publish_policy(ctx: Context, msg: m.PublishPolicy) -> None:
    if not MembersKeeper(ctx).is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the association may publish the policy")
    keeper = GovernanceKeeper(ctx)
    current = keeper.policy().version
    if msg.version != current + 1:
        raise Rejected(Code.CONFLICT, f"policy version must be {current + 1}")
    try:
        Policy(msg.text, msg.version)
    except PolicyError as exc:
        raise Rejected(Code.INVALID_PAYLOAD, str(exc)) from None
    keeper.keep_current()  # the version replaced, if not kept yet
    keeper.publish(msg.version, msg.text)
    keeper.keep_current()


# -- who may act in the association's name -----------------------------------------------------------
@dataclass(frozen=True)
class Signer:
    """A tx signer's account and member, as authentication read them (read-only here)."""

    account: dict[str, Any]
    member: dict[str, Any] | None


def authorize(ctx: Context, tx_type: str, msg: BaseModel, signer: Signer) -> None:
    """Called before every handler. A tx signed by an account of the association exercises one of
    its powers (governance/powers.py): the officer key may sign it only if the board left that power
    to the officer, or if the officer's key is itself a board whose one approval suffices (a chain
    whose genesis named no board). A board seat's key signs board transactions and its own key
    rotation; where one approval is the board's (threshold 1), a seat may also send an action
    directly, and acts as the association. Actions a board proposal executes were authorised by
    its approvals."""
    if ctx.acting_as is not None:
        return
    account, owner = signer.account, signer.member
    if owner is None or ASSOCIATION not in owner["roles"]:
        if tx_type in ASSOCIATION_ONLY:
            raise Rejected(Code.UNAUTHORIZED, f"only the association may send {tx_type}")
        return
    board = GovernanceKeeper(ctx).board()
    if account["kind"] == "board":
        if tx_type in BOARD_TXS or (tx_type == "members.RotateKey" and ctx.signer in board["seats"]):
            return
        if tx_type in BY_TYPE and board["threshold"] == 1 and ctx.signer in board["seats"]:
            ctx.acting_as = board["association"]  # a proposal this seat's approval would execute at once
            return
        raise Rejected(Code.UNAUTHORIZED, "a board key signs only board.Propose, board.Approve and its own "
                                          "members.RotateKey (and, on a board of threshold 1, the association's "
                                          "actions)")
    power = BY_TYPE.get(tx_type)
    if tx_type == "members.Register" and ASSOCIATION in getattr(msg, "roles", ()):
        power = "board"  # a second association would be a second officer
    if power is None:
        return
    if account["kind"] != "member":
        raise Rejected(Code.UNAUTHORIZED, f"{tx_type} in the association's name needs its officer key or the board")
    if holder(board["powers"], power) != BOARD:
        return
    if board["threshold"] == 1 and ctx.signer in board["seats"]:
        return
    raise Rejected(Code.UNAUTHORIZED, f"{tx_type} ({power}) needs the board: {board['threshold']} of "
                                      f"{len(board['seats'])} approvals through board.Propose")


# -- the board ------------------------------------------------------------------------------------
def _seat(ctx: Context, board: dict) -> str:
    if ctx.signer not in board["seats"]:
        raise Rejected(Code.UNAUTHORIZED, f"{ctx.signer} holds no board seat")
    return ctx.signer


def board_handlers(router: Mapping[str, Handler]) -> dict[str, Handler]:
    """The board's transactions. ``router`` is the chain's whole handler table: a proposal's
    action is validated and executed by the handler a transaction of its type would reach."""

    def action_model(action: m.Action) -> BaseModel:
        if action.type not in BY_TYPE or action.type not in router:
            raise Rejected(Code.INVALID_PAYLOAD, f"{action.type} is not an action of the association")
        try:
            return router[action.type][0].model_validate(action.payload)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()[:5])
            raise Rejected(Code.INVALID_PAYLOAD, f"invalid {action.type}: {fields}") from None

    def execute(ctx: Context, keeper: GovernanceKeeper, board: dict, proposal: dict) -> None:
        action = m.Action.model_validate(proposal["action"])
        inner = Context(store=ctx.store.branch(), height=ctx.height, time=ctx.time, tx=ctx.tx,
                        acting_as=board["association"], proposal=proposal["id"])
        try:
            msg = action_model(action)
            router[action.type][1](inner, msg)
        except Rejected as exc:  # the approvals stand; the action changed nothing
            keeper.close(proposal, "failed", code=exc.code, reason=str(exc))
            ctx.emit("ProposalFailed", f"proposal:{proposal['id']}", proposal=proposal["id"], type=action.type,
                     code=exc.code, reason=str(exc))
            return
        inner.store.merge_into_parent()
        keeper.close(proposal, "executed")
        ctx.emit("ProposalExecuted", f"proposal:{proposal['id']}", proposal=proposal["id"], type=action.type,
                 approvals=proposal["approvals"])
        ctx.events.extend(inner.events)

    def tally(ctx: Context, keeper: GovernanceKeeper, board: dict, proposal: dict) -> None:
        current = [a for a in proposal["approvals"] if a in board["seats"]]  # seats may have changed since
        if len(current) >= board["threshold"]:
            execute(ctx, keeper, board, proposal)

    def propose(ctx: Context, msg: m.Propose) -> None:
        keeper = GovernanceKeeper(ctx)
        board = keeper.board()
        seat = _seat(ctx, board)
        if keeper.proposal(msg.id) is not None:
            raise Rejected(Code.CONFLICT, f"proposal {msg.id} already exists")
        action_model(msg.action)
        expires_at = msg.expires_at if msg.expires_at is not None else ctx.time + board["proposal_ttl_s"]
        if not ctx.time < expires_at <= ctx.time + m.MAX_TTL_S:
            raise Rejected(Code.INVALID_PAYLOAD, f"expires_at must be after now and within {m.MAX_TTL_S} s")
        if keeper.open_count() >= MAX_OPEN_PROPOSALS:
            raise Rejected(Code.INVALID_STATE, f"{MAX_OPEN_PROPOSALS} proposals are open: let some execute or expire")
        proposal = {"id": msg.id, "action": msg.action.model_dump(), "proposer": seat, "approvals": [seat],
                    "status": "open", "height": ctx.height, "expires_at": expires_at,
                    "threshold": board["threshold"]}
        keeper.create(proposal)
        ctx.emit("ProposalSubmitted", f"proposal:{msg.id}", proposal=msg.id, type=msg.action.type, proposer=seat,
                 expires_at=expires_at)
        tally(ctx, keeper, board, proposal)

    def approve(ctx: Context, msg: m.Approve) -> None:
        keeper = GovernanceKeeper(ctx)
        board = keeper.board()
        seat = _seat(ctx, board)
        proposal = keeper.proposal(msg.id)
        if proposal is None:
            raise Rejected(Code.NOT_FOUND, f"unknown proposal {msg.id}")
        if proposal["status"] != "open" or proposal["expires_at"] <= ctx.time:
            raise Rejected(Code.INVALID_STATE, f"proposal {msg.id} is {proposal['status']}"
                           + (" and expired" if proposal["status"] == "open" else ""))
        if seat in proposal["approvals"]:
            raise Rejected(Code.CONFLICT, f"{seat} already approved proposal {msg.id}")
        proposal["approvals"] = [*proposal["approvals"], seat]
        keeper.put_proposal(proposal)
        ctx.emit("ProposalApproved", f"proposal:{msg.id}", proposal=msg.id, seat=seat,
                 approvals=len(proposal["approvals"]), threshold=board["threshold"])
        tally(ctx, keeper, board, proposal)

    return {"board.Propose": (m.Propose, propose), "board.Approve": (m.Approve, approve)}


def _association_only(ctx: Context) -> None:
    """Also checked by ``authorize``; kept in each handler of the association's own txs."""
    if not MembersKeeper(ctx).is_association(ctx.signer):
        raise Rejected(Code.UNAUTHORIZED, "only the association may do this")


def configure_board(ctx: Context, msg: m.ConfigureBoard) -> None:
    _association_only(ctx)
    keeper, members = GovernanceKeeper(ctx), MembersKeeper(ctx)
    board = keeper.board()
    association = board["association"]
    seats = []
    for seat in msg.seats:
        account_id = f"{association}.board-{seat.name}"
        account = members.account(account_id)
        if account is not None and account["kind"] != "board":
            raise Rejected(Code.CONFLICT, f"account {account_id} exists and is not a board seat")
        if account is None or account["public_key"] != seat.public_key:
            members.put_account({"id": account_id, "member": association, "kind": "board",
                                 "public_key": seat.public_key, "nonce": account["nonce"] if account else 0})
        seats.append(account_id)
    board.update(seats=seats, threshold=msg.threshold, powers={**board["powers"], **(msg.powers or {})},
                 height=ctx.height)
    if msg.proposal_ttl_s is not None:
        board["proposal_ttl_s"] = msg.proposal_ttl_s
    keeper.put_board(board)
    ctx.emit("BoardConfigured", "governance:board", seats=seats, threshold=msg.threshold, powers=board["powers"],
             proposal_ttl_s=board["proposal_ttl_s"])


def begin_block(ctx: Context) -> None:
    keeper = GovernanceKeeper(ctx)
    for proposal in keeper.due(ctx.time):
        keeper.close(proposal, "expired")
        ctx.emit("ProposalExpired", f"proposal:{proposal['id']}", proposal=proposal["id"],
                 type=proposal["action"]["type"], approvals=len(proposal["approvals"]))


# -- chain parameters and upgrades --------------------------------------------------------------------
def set_params(ctx: Context, msg: m.SetParams) -> None:
    _association_only(ctx)
    current = chain_params.get(ctx)
    try:
        updated = chain_params.Params.model_validate({**current.model_dump(), **msg.params})
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise Rejected(Code.INVALID_PAYLOAD, f"invalid params: {fields}") from None
    chain_params.put(ctx, updated)
    ctx.emit("ParamsChanged", "governance:params", changed=dict(sorted(msg.params.items())))


def schedule_upgrade(ctx: Context, msg: m.ScheduleUpgrade) -> None:
    _association_only(ctx)
    keeper = GovernanceKeeper(ctx)
    if keeper.upgrade() is not None:
        raise Rejected(Code.CONFLICT, f"upgrade {keeper.upgrade()['name']} is already scheduled: cancel it first")
    if msg.height <= ctx.height:
        raise Rejected(Code.INVALID_PAYLOAD, f"height {msg.height} is not after this block ({ctx.height})")
    if msg.app_version <= keeper.app_version():
        raise Rejected(Code.INVALID_PAYLOAD, f"app version {msg.app_version} is not after the chain's "
                                             f"{keeper.app_version()}")
    plan = {"name": msg.name, "height": msg.height, "app_version": msg.app_version, "scheduled_height": ctx.height}
    keeper.schedule(plan)
    ctx.emit("UpgradeScheduled", "governance:upgrade", name=msg.name, height=msg.height, app_version=msg.app_version)


def cancel_upgrade(ctx: Context, msg: m.CancelUpgrade) -> None:
    _association_only(ctx)
    keeper = GovernanceKeeper(ctx)
    plan = keeper.upgrade()
    if plan is None or plan["name"] != msg.name:
        raise Rejected(Code.NOT_FOUND, f"no upgrade {msg.name} is scheduled")
    keeper.cancel()
    ctx.emit("UpgradeCancelled", "governance:upgrade", name=msg.name, height=plan["height"])


HANDLERS = {
    "governance.PublishPolicy": (m.PublishPolicy, publish_policy),
    "governance.ConfigureBoard": (m.ConfigureBoard, configure_board),
    "governance.SetParams": (m.SetParams, set_params),
    "governance.ScheduleUpgrade": (m.ScheduleUpgrade, schedule_upgrade),
    "governance.CancelUpgrade": (m.CancelUpgrade, cancel_upgrade),
}
