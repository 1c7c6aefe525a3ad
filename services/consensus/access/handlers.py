"""Access handlers. Approvals follow the classification policy (services/common/policy.py)."""

from __future__ import annotations

from services.common.policy import AssetView, Caller, Forbidden
from services.common.tx import Code
from services.consensus.access import messages as m
from services.consensus.access.keeper import OPEN, AccessKeeper
from services.consensus.assets.keeper import AssetsKeeper
from services.consensus.context import Context, Rejected
from services.consensus.governance.keeper import GovernanceKeeper
from services.consensus.members.keeper import MembersKeeper


def chain_caller(member: dict) -> Caller:
    """A tx signed by a member's own key acts as that member's admin."""
    return Caller(member["id"], "member_admin", tuple(member["roles"]), member["status"] != "active")


def request(ctx: Context, msg: m.Request) -> None:
    consumer = MembersKeeper(ctx).signing_member(ctx.signer, "consumer")
    access = AccessKeeper(ctx)
    if access.get(msg.id) is not None:
        raise Rejected(Code.CONFLICT, f"access request {msg.id} already exists")
    asset = AssetsKeeper(ctx).usable(msg.asset)
    if asset is None:
        raise Rejected(Code.NOT_FOUND, f"asset {msg.asset} is not listed")
    not_offered = sorted(set(msg.operations) - set(asset["operations"]))
    if not_offered:
        raise Rejected(Code.UNAUTHORIZED, f"asset {msg.asset} does not allow {', '.join(not_offered)}")
    policy, caller, view = GovernanceKeeper(ctx).policy(), chain_caller(consumer), AssetView.of(asset)
    try:
        needs = policy.approvals_needed(caller, view, msg.operations)
    except Forbidden as exc:
        raise Rejected(Code.UNAUTHORIZED, str(exc)) from None
    for op in msg.operations:
        if not policy.decide(caller, "request_access", view, operation=op).allowed:
            raise Rejected(Code.UNAUTHORIZED, f"policy v{policy.version} does not let {consumer['id']} request {op}")
    if msg.expires_at <= ctx.time:
        raise Rejected(Code.INVALID_PAYLOAD, "expires_at is in the past")
    grant = {"id": msg.id, "asset": msg.asset, "provider": asset["owner"], "consumer": consumer["id"],
             "operations": sorted(set(msg.operations)), "purpose": msg.purpose, "expires_at": msg.expires_at,
             "max_runs": msg.max_runs, "runs_used": 0, "needs": list(needs), "approvals": [],
             "status": "pending", "requested_height": ctx.height}
    access.create(grant)
    ctx.emit("AccessRequested", f"access:{msg.id}", grant=msg.id, asset=msg.asset, provider=asset["owner"],
             consumer=consumer["id"], operations=grant["operations"], needs=grant["needs"])
    if not needs:
        _grant(ctx, access, grant)


def _grant(ctx: Context, access: AccessKeeper, grant: dict) -> None:
    grant["status"] = "granted"
    access.put(grant)
    ctx.emit("AccessGranted", f"access:{grant['id']}", grant=grant["id"], asset=grant["asset"],
             consumer=grant["consumer"], provider=grant["provider"], operations=grant["operations"],
             expires_at=grant["expires_at"], max_runs=grant["max_runs"])


def _approver_role(ctx: Context, grant: dict) -> str:
    """As which party the signer acts on this grant: provider or association."""
    members = MembersKeeper(ctx)
    member = members.signing_member(ctx.signer)
    if member["id"] == grant["provider"]:
        return "provider"
    if members.is_association(ctx.signer):
        return "association"
    raise Rejected(Code.UNAUTHORIZED, "only the asset's provider or the association may decide on access")


def _pending(access: AccessKeeper, grant_id: str) -> dict:
    grant = access.get(grant_id)
    if grant is None or grant["status"] != "pending":
        raise Rejected(Code.INVALID_STATE, f"access request {grant_id} is not pending")
    return grant


def approve(ctx: Context, msg: m.Approve) -> None:
    access = AccessKeeper(ctx)
    grant = _pending(access, msg.id)
    role = _approver_role(ctx, grant)
    if role not in grant["needs"] or role in grant["approvals"]:
        raise Rejected(Code.UNAUTHORIZED, f"no {role} approval is pending on {msg.id}")
    grant["approvals"] = sorted({*grant["approvals"], role})
    access.put(grant)
    ctx.emit("AccessApproved", f"access:{msg.id}", grant=msg.id, by=role)
    if set(grant["approvals"]) >= set(grant["needs"]):
        _grant(ctx, access, grant)


def reject(ctx: Context, msg: m.Reject) -> None:
    access = AccessKeeper(ctx)
    grant = _pending(access, msg.id)
    _approver_role(ctx, grant)
    access.close(grant, "rejected", msg.reason)


def revoke(ctx: Context, msg: m.Revoke) -> None:
    access = AccessKeeper(ctx)
    grant = access.get(msg.id)
    if grant is None or grant["status"] not in OPEN:
        raise Rejected(Code.INVALID_STATE, f"access {msg.id} is not open")
    member = MembersKeeper(ctx).signing_member(ctx.signer)
    if member["id"] != grant["consumer"]:
        _approver_role(ctx, grant)
    access.close(grant, "revoked", msg.reason)


def begin_block(ctx: Context) -> None:
    AccessKeeper(ctx).expire_due(ctx.time)


HANDLERS = {
    "access.Request": (m.Request, request),
    "access.Approve": (m.Approve, approve),
    "access.Reject": (m.Reject, reject),
    "access.Revoke": (m.Revoke, revoke),
}
