"""``/v1/webhooks``: a member's admin registers, lists and removes its webhooks, reads their
deliveries with status, and replays them (services/gateway/webhooks.py does the rest)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from services.gateway.auth import Principal
from services.gateway.problems import Problem
from services.gateway.views import next_page
from services.gateway.webhooks import CATEGORIES, EndpointRefused, check_url

Category = Literal["access", "grants", "jobs", "statements"]
assert set(Category.__args__) == set(CATEGORIES)  # noqa: S101 - the API's names are the outbox's
HookId = Annotated[str, Path(min_length=19, max_length=19, pattern=r"^wh_[0-9a-f]{16}$")]
DeliveryId = Annotated[str, Path(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]


class NewWebhook(BaseModel):
    url: str = Field(max_length=2000, description="https:// only; its host must resolve to public addresses")
    events: list[Category] = Field(min_length=1, max_length=4, description=(
        "access: AccessRequested; grants: AccessApproved/Granted/Rejected/Revoked/Expired; jobs: the job's "
        "chain events; statements: EscrowHeld, JobSettled, Credits*"))
    member: str | None = Field(None, max_length=40, description="the caller's own member (the default); no other")


class WebhookInfo(BaseModel):
    id: str
    member: str
    url: str
    events: list[str]
    created_at: float


class NewWebhookResult(WebhookInfo):
    secret: str = Field(description="the Standard Webhooks signing secret (whsec_…), shown once")


class DeliveryInfo(BaseModel):
    id: str
    webhook: str
    event_id: str = Field(description="also the delivery's webhook-id header: the receiver dedupes on it")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: float
    next_attempt_at: float | None
    delivered_at: float | None
    last_status: int | None = Field(description="the endpoint's last HTTP status, if it answered")
    last_error: str | None


class Replayed(BaseModel):
    replayed: int


def router(gw) -> APIRouter:  # gw: services.gateway.app.Gateway
    r = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
    who = Depends(gw.authenticate)

    def admin(p: Principal) -> None:
        if p.role not in ("member_admin", "association_admin"):
            raise Problem(403, "Forbidden", "only a member's admin manages its webhooks")

    async def own(p: Principal, hook_id: str):
        admin(p)
        hook = await gw.webhooks.get(hook_id)
        if hook is None or (hook.member != p.member and p.role != "association_admin"):
            raise Problem(404, "Not found", f"no webhook {hook_id} of {p.member}")
        return hook

    @r.post("", summary="Register a webhook for my member's events", status_code=201)
    async def create(body: NewWebhook, p: Principal = who) -> NewWebhookResult:
        admin(p)
        if body.member is not None and body.member != p.member:
            raise Problem(403, "Forbidden", f"{p.member} may register webhooks only for its own events")
        try:
            await check_url(body.url, gw.settings.webhook_allow_private)
        except EndpointRefused as exc:
            raise Problem(422, "Webhook URL refused", str(exc)) from None
        if await gw.webhooks.count(p.member) >= gw.settings.webhooks_per_member:
            raise Problem(409, "Too many webhooks", f"{p.member} has {gw.settings.webhooks_per_member} already")
        hook, secret = await gw.webhooks.create(p.member, body.url, list(body.events))
        return NewWebhookResult(**hook.__dict__, secret=secret)

    @r.get("", summary="My member's webhooks (every member's, for the association)")
    async def listing(request: Request, response: Response, p: Principal = who,
                      after: str = Query("", max_length=19), limit: int = Query(100, ge=1, le=500)
                      ) -> list[WebhookInfo]:
        admin(p)
        hooks = await gw.webhooks.list(None if p.role == "association_admin" else p.member, after, limit)
        next_page(request, response, hooks[-1].id if len(hooks) == limit else None)
        return [WebhookInfo(**h.__dict__) for h in hooks]

    @r.delete("/{hook_id}", summary="Remove a webhook and its deliveries", status_code=204)
    async def delete(hook_id: HookId, p: Principal = who) -> None:
        await own(p, hook_id)
        await gw.webhooks.delete(hook_id)

    @r.get("/{hook_id}/deliveries", summary="A webhook's deliveries with their status, oldest first")
    async def deliveries(request: Request, response: Response, hook_id: HookId, p: Principal = who,
                         status: Literal["pending", "delivered", "failed"] | None = None,
                         after: str = Query("", max_length=32), limit: int = Query(100, ge=1, le=500)
                         ) -> list[DeliveryInfo]:
        await own(p, hook_id)
        found = await gw.webhooks.deliveries(hook_id, status, after, limit)
        next_page(request, response, found[-1].id if len(found) == limit else None)
        return [DeliveryInfo(**d.__dict__) for d in found]

    @r.post("/{hook_id}/deliveries/{delivery_id}/replay", summary="Send one delivery again", status_code=202)
    async def replay_one(hook_id: HookId, delivery_id: DeliveryId, p: Principal = who) -> Replayed:
        await own(p, hook_id)
        n = await gw.webhooks.replay(hook_id, delivery_id)
        if not n:
            raise Problem(404, "Not found", f"no delivery {delivery_id} of {hook_id}")
        return Replayed(replayed=n)

    @r.post("/{hook_id}/replay", summary="Send again every delivery queued since a time", status_code=202)
    async def replay_since(hook_id: HookId, since: float = Query(..., ge=0, le=1e11), p: Principal = who
                           ) -> Replayed:
        await own(p, hook_id)
        return Replayed(replayed=await gw.webhooks.replay(hook_id, since=since))

    return r
