"""What a caller may do, decided by the on-chain Cedar policy (classification-graded actions)
and, for actions the classification does not govern, by role. The chain re-checks what it
owns; for grant-dependent decisions both evaluate the same policy text on the same state."""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.common.policy import AssetView, Caller, Forbidden, GrantView
from services.common.tx import Tx
from services.gateway.auth import Principal
from services.gateway.chainview import ChainView

ADMINS = {"association_admin"}
MEMBER_ADMINS = {"member_admin", "association_admin"}
BY_ROLE: dict[str, set[str]] = {
    "members.Register": ADMINS, "members.Suspend": ADMINS, "members.Reinstate": ADMINS,
    "bank.Deposit": ADMINS, "bank.Withdraw": ADMINS, "governance.PublishPolicy": ADMINS,
    "members.SetNode": MEMBER_ADMINS, "members.RotateKey": MEMBER_ADMINS | {"compute_operator"},
    "bank.Transfer": MEMBER_ADMINS, "jobs.Abort": MEMBER_ADMINS,
    "jobs.Attest": {"compute_operator"}, "jobs.Fail": {"compute_operator", "member_admin"},
    "members.Delegate": {"member_admin"}, "members.Undelegate": {"member_admin"},
}
JOB_OPERATION = {"psi": "psi", "psi_cardinality": "psi_cardinality", "aggregation": "aggregation",
                 "he_scoring": "he_scoring", "supply_chain": "supply_chain_verification"}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    asset: str | None = None
    job: str | None = None


def caller_of(p: Principal) -> Caller:
    return Caller(p.member, p.role, p.member_roles, False)


async def authorize_tx(p: Principal, tx: Tx, view: ChainView, now: int | None = None) -> Verdict:
    """May ``p`` relay ``tx``? The tx must be signed by the caller's own member (or node) account."""
    now = int(time.time()) if now is None else now
    account = await view.account(tx.signer)
    if account is None or account["member"] != p.member:
        return Verdict(False, f"the transaction is signed by {tx.signer}, not by an account of {p.member}")
    if (account["kind"] == "node") != (p.role == "compute_operator"):
        return Verdict(False, "compute operators sign with the node key, people with the member key")
    if account["kind"] == "delegate" and tx.type not in account.get("powers", ()):
        return Verdict(False, f"delegate {tx.signer} may sign only {', '.join(account.get('powers', ()))}")
    if tx.type in BY_ROLE:
        ok = p.role in BY_ROLE[tx.type]
        return Verdict(ok, "" if ok else f"role {p.role} may not send {tx.type}", job=tx.payload.get("job"))
    policy, caller, payload = await view.policy(), caller_of(p), tx.payload
    if tx.type == "assets.List":
        asset = AssetView(str(payload.get("id")), str(payload.get("level")), p.member,
                          tuple(payload.get("operations") or ()), "listed")
        return _decided(policy.decide(caller, "list_asset", asset), asset.id, policy.version)
    if tx.type in ("assets.Update", "assets.Delist", "assets.Suspend"):
        asset = await view.get(f"/assets/{payload.get('id')}")
        if asset is None:
            return Verdict(False, f"unknown asset {payload.get('id')}")
        action = {"assets.Update": "update_asset", "assets.Delist": "delist_asset", "assets.Suspend": "suspend"}[tx.type]
        return _decided(policy.decide(caller, action, AssetView.of(asset)), asset["id"], policy.version)
    if tx.type == "access.Request":
        asset = await view.get(f"/assets/{payload.get('asset')}")
        if asset is None:
            return Verdict(False, f"unknown asset {payload.get('asset')}")
        ops = list(payload.get("operations") or [])
        try:
            policy.approvals_needed(caller, AssetView.of(asset), ops)
        except Forbidden as exc:
            return Verdict(False, str(exc), asset["id"])
        for op in ops:
            decision = policy.decide(caller, "request_access", AssetView.of(asset), operation=op)
            if not decision.allowed:
                return Verdict(False, f"policy v{policy.version} does not let {p.role} request {op}", asset["id"])
        return Verdict(True, "", asset["id"])
    if tx.type in ("access.Approve", "access.Reject", "access.Revoke"):
        return await _decide_on_grant(p, tx, view, policy)
    if tx.type == "jobs.Submit":
        return await authorize_run(p, payload, view, now)
    return Verdict(False, f"{tx.type} cannot be sent through the gateway")


async def authorize_run(p: Principal, payload: dict, view: ChainView, now: int) -> Verdict:
    """A job submission: the policy's ``run`` decision for every input, as the chain makes it."""
    policy, caller = await view.policy(), caller_of(p)
    operation = JOB_OPERATION.get(payload.get("type"), "")
    for item in payload.get("inputs") or []:
        asset = await view.get(f"/assets/{item.get('asset')}", fresh=True)
        grant = await view.get(f"/access/{item.get('grant')}", fresh=True)
        if asset is None or grant is None or grant["asset"] != asset["id"]:
            return Verdict(False, f"no grant {item.get('grant')} on {item.get('asset')}", item.get("asset"),
                           payload.get("id"))
        decision = policy.decide(caller, "run", AssetView.of(asset), operation=operation,
                                 grant=GrantView.of(grant, now))
        if not decision.allowed:
            return Verdict(False, f"policy v{policy.version} does not allow {operation} on {asset['id']} "
                                  f"under grant {grant['id']} ({grant['status']})", asset["id"], payload.get("id"))
    return Verdict(True, "", job=payload.get("id"))


async def _decide_on_grant(p: Principal, tx: Tx, view: ChainView, policy) -> Verdict:
    grant = await view.get(f"/access/{tx.payload.get('id')}", fresh=True)
    if grant is None:
        return Verdict(False, f"unknown access request {tx.payload.get('id')}")
    asset = await view.get(f"/assets/{grant['asset']}")
    if tx.type == "access.Revoke" and grant["consumer"] == p.member and p.role in ("member_admin", "analyst"):
        return Verdict(True, "", grant["asset"])
    as_ = "provider" if asset and p.member == asset["owner"] else "association"
    action = "reject_access" if tx.type == "access.Reject" else "approve_access"
    view_ = AssetView.of(asset) if asset else AssetView(grant["asset"], "L4", grant["provider"], ())
    return _decided(policy.decide(caller_of(p), action, view_, as_=as_), grant["asset"], policy.version)


def _decided(decision, asset_id: str, version: int) -> Verdict:
    return Verdict(decision.allowed, "" if decision.allowed else f"denied by policy v{version}", asset_id)
