"""The gateway's versioned REST API (/v1). Thin handlers: authenticate, authorize, call the
chain or an upstream service, and leave the decision and reason for the audit trail."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.common import tracing
from services.common.audit import AuditRecord
from services.common.chain import ChainError, TxRejected
from services.common.deadletter import dead_letter_topic
from services.common.events import CHAIN_EVENTS, EVENT_TOPICS, Event, EventDecodeError
from services.common.settings import KafkaSecurity
from services.common.tx import Code, Tx, TxError
from services.gateway.auth import Principal
from services.gateway.authz import authorize_tx
from services.gateway import problems
from services.gateway.problems import Problem

CODE_NAMES = {value: name.lower().replace("_", "-") for name, value in vars(Code).items() if name.isupper()}
CODE_STATUS = {Code.UNAUTHORIZED: 403, Code.NOT_FOUND: 404, Code.CONFLICT: 409, Code.BAD_NONCE: 409,
               Code.INSUFFICIENT_FUNDS: 402, Code.INVALID_PAYLOAD: 422, Code.UNDECODABLE: 422,
               Code.INVALID_STATE: 409, Code.SUSPENDED_SIGNER: 403, Code.UNKNOWN_SIGNER: 403}


class TxBody(BaseModel):
    tx: Tx = Field(description="a chain transaction signed by the caller's member (or node) key")


class TxResult(BaseModel):
    tx_hash: str
    height: int
    events: list[dict[str, Any]]


class TxStatus(BaseModel):
    tx_hash: str
    status: Literal["pending", "committed"]
    height: int | None = Field(None, description="the block that holds it, once committed")
    code: int | None = Field(None, description="its result code once committed: 0 is success (services/common/tx.py Code)")
    log: str | None = None


class NewKey(BaseModel):
    member: str = Field(min_length=2, max_length=40, pattern=r"^[a-z0-9][a-z0-9\-]*$")
    role: Literal["association_admin", "member_admin", "analyst", "compute_operator", "auditor"]


class KeyInfo(BaseModel):
    key_id: str
    member: str
    role: str
    created_at: float
    revoked_at: float | None


class NewKeyResult(KeyInfo):
    token: str = Field(description="shown once; only its hash is stored")


class Account(BaseModel):
    id: str
    member: str
    kind: str
    public_key: str
    nonce: int


class JobRecord(BaseModel):
    """A job as the chain records it (more fields as its type and progress add them)."""

    model_config = ConfigDict(extra="allow")
    id: str
    type: str
    consumer: str
    participants: list[str]
    status: str


class Grant(BaseModel):
    """An access request or grant as the chain records it."""

    model_config = ConfigDict(extra="allow")
    id: str
    asset: str
    consumer: str
    provider: str
    operations: list[str]
    status: str


class Reconciliation(BaseModel):
    equal: bool = Field(description="billing's balances, escrow and credit supply equal the chain's")
    differences: list[str] = Field(description="each difference billing found, in its words ([] when equal)")
    checked_at: float = Field(description="when billing answered (unix seconds): it reconciles on the call")


class PolicyDoc(BaseModel):
    version: int
    sha256: str
    text: str


class PolicyVersion(BaseModel):
    """One published version of the policy, as the chain keeps it (``policy/versions/<version>``)."""

    version: int
    sha256: str
    height: int = Field(description="the block that published it (0: the genesis)")
    text: str | None = Field(None, description="the policy text (one version only; the list leaves it out)")


class DraftBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["assets.List", "assets.Update"] = "assets.List"
    listing: Any = Field(description="the tx payload (id, level, operations, commitment, price, min_group_size, "
                                     "metadata): any JSON, checked by the catalog field by field")


# Annotated, not a shared default: FastAPI binds a shared Path() to the first parameter's name.
Id = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[a-z0-9][a-z0-9.\-]*$")]
KeyId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[a-z0-9_]+$")]
# The audit reason of an allowed revocation (DELETE /keys/{key_id}, and a rotation's old key), and
# only of that: a gateway restored from a backup revokes the key again from the trail it takes back
# (Gateway._revoke_again).
REVOKED_REASON = "revoked key {}"
REVOKED = re.compile(r"revoked key ([a-z0-9_]{1,40})")


def revoked_key(record) -> str | None:
    """The key an audit record says was revoked: an allowed call whose reason is REVOKED_REASON."""
    found = REVOKED.fullmatch(record.reason) if record.decision == "allow" else None
    return found[1] if found else None

AssetId = Annotated[str, StringConstraints(min_length=3, max_length=80, pattern=r"^[a-z0-9][a-z0-9.\-]*$")]
TxHash = Annotated[str, Path(min_length=64, max_length=64, pattern=r"^[0-9A-Fa-f]{64}$")]

JOB_ENDED = ("completed", "failed", "aborted")
JOB_POLL_S = 0.5  # how often a job's stream reads the chain's record (a local ABCI query)
JOB_STREAM_S = 600.0  # a stream ends after this; EventSource reconnects and gets the record again
JOB_STREAMS_PER_MEMBER = 16  # each open stream reads the chain twice a second


def next_page(request: Request, response: Response, after: str | int | None, key: str = "after") -> None:
    """Lists keep their shape (a JSON array); a full page says where the next one starts in an RFC
    8288 ``Link: <…>; rel="next"`` header, the same URL with ``after`` set to the page's last key."""
    if after is not None:
        url = request.url.include_query_params(**{key: after})
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'


def association_staff(p: Principal) -> bool:
    """The association's admins and auditors, who see every member's records. A member's own
    ``auditor`` (or any other) key is its member's only: a member admin can make one, so the role
    alone opens nothing of another member's."""
    return p.role in ("association_admin", "auditor") and "association" in p.member_roles


def router(gw) -> APIRouter:  # gw: services.gateway.app.Gateway
    r = APIRouter(prefix="/v1")
    who = Depends(gw.authenticate)

    def mark(request: Request, *, asset: str | None = None, job: str | None = None) -> None:
        request.state.asset, request.state.job = asset, job

    async def relay(request: Request, p: Principal, body: TxBody, expect: str, **must: str) -> TxResult:
        tx = body.tx
        if tx.type != expect:
            raise Problem(422, "Wrong transaction type", f"this endpoint takes {expect}, not {tx.type}")
        for key, value in must.items():
            if tx.payload.get(key) != value:
                raise Problem(422, "Transaction does not match the URL", f"payload.{key} must be {value}")
        try:
            raw = tx.encode()  # what the chain gets: a value the canonical encoding refuses is the caller's error
        except TxError as exc:
            raise Problem(422, "Undecodable transaction", str(exc)) from None
        verdict = await authorize_tx(p, tx, gw.view)
        mark(request, asset=verdict.asset, job=verdict.job)
        if not verdict.allowed:
            raise Problem(403, "Forbidden", verdict.reason)
        try:
            with tracing.span("chain broadcast", kind=tracing.CLIENT, attributes={"rdx.tx.type": tx.type}) as span:
                if span is not None:  # tracing on: the tx carries this span on to the relay (tx.py: trace)
                    tx = tx.model_copy(update={"trace": tracing.traceparent_of(span)})
                    raw = tx.encode()
                    span.set_attribute("rdx.tx.hash", tx.hash)
                checked = await gw.chain.broadcast(raw)
                if checked["code"] != Code.OK:
                    raise TxRejected(checked["code"], checked.get("log", ""), tx.hash)
                committed = await gw.chain.wait_for(tx.hash, timeout=gw.settings.upstream_timeout_s)
        except TxRejected as exc:
            raise Problem(CODE_STATUS.get(exc.code, 400), "Rejected by the chain", f"code {exc.code}: {exc.log}",
                          type=f"{problems.TYPE}chain:{CODE_NAMES.get(exc.code, exc.code)}", code=exc.code) from None
        except ChainError:
            # The hash of the bytes broadcast (with tracing on, not the one the member signed): to look it up.
            raise Problem(503, "Chain unavailable", f"the chain did not answer in time; the tx may still commit: "
                          f"GET /v1/tx/{tx.hash} tells") from None
        return TxResult(tx_hash=committed.tx_hash, height=committed.height, events=committed.events)

    # -- catalog --------------------------------------------------------------------------------
    @r.get("/listings", summary="Search the catalog")
    async def search(request: Request, p: Principal = who, q: str | None = Query(None, max_length=200),
                     cursor: str | None = Query(None, max_length=200), limit: int = Query(20, ge=1, le=100)) -> dict:
        # a list of pairs, not a dict: filters repeat (level=L1&level=L3)
        params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("q", "cursor", "limit")]
        params += [(k, v) for k, v in (("q", q), ("cursor", cursor), ("limit", str(limit))) if v is not None]
        return await gw.upstream("catalog", "/v1/listings", params)

    @r.get("/listings/{asset_id}", summary="One listing with its on-chain versions")
    async def listing(request: Request, asset_id: Id, p: Principal = who) -> dict:
        mark(request, asset=asset_id)
        return await gw.upstream("catalog", f"/v1/listings/{asset_id}")

    @r.post("/drafts/validate", summary="Check my member's listing draft field by field (the catalog's validation)")
    async def validate_draft(request: Request, body: DraftBody, p: Principal = who) -> dict:
        """The catalog's draft validation for a listing the caller's member would sign: the signer is
        always the caller's member (an update is checked against its own listings only), and only a
        provider's member admin asks, as only it may sign ``assets.List`` / ``assets.Update``."""
        if p.role != "member_admin" or "provider" not in p.member_roles:
            raise Problem(403, "Forbidden", "only a provider's member admin drafts listings")
        asset = body.listing.get("id") if isinstance(body.listing, dict) else None
        mark(request, asset=asset if isinstance(asset, str) and len(asset) <= 80 else None)
        return await upstream_post(gw.http, gw.settings.catalog_url, "/v1/drafts/validate",
                                   {"type": body.type, "signer": p.member, "listing": body.listing}, "catalog")

    # -- access workflow ------------------------------------------------------------------------
    @r.post("/access-requests", summary="Ask for access (signed access.Request)")
    async def request_access(request: Request, body: TxBody, p: Principal = who) -> TxResult:
        return await relay(request, p, body, "access.Request")

    @r.post("/access-requests/{grant_id}/approve", summary="Approve (signed access.Approve)")
    async def approve(request: Request, body: TxBody, grant_id: Id, p: Principal = who) -> TxResult:
        return await relay(request, p, body, "access.Approve", id=grant_id)

    @r.post("/access-requests/{grant_id}/reject", summary="Reject (signed access.Reject)")
    async def reject(request: Request, body: TxBody, grant_id: Id, p: Principal = who) -> TxResult:
        return await relay(request, p, body, "access.Reject", id=grant_id)

    @r.post("/grants/{grant_id}/revoke", summary="Revoke a grant (signed access.Revoke)")
    async def revoke(request: Request, body: TxBody, grant_id: Id, p: Principal = who) -> TxResult:
        return await relay(request, p, body, "access.Revoke", id=grant_id)

    def page_of(request: Request, response: Response, items: list[dict], after: str, limit: int) -> list[dict]:
        """One page of ``items`` in id order, from after ``after``, with the next page's Link."""
        items = sorted((i for i in items if i["id"] > after), key=lambda i: i["id"])
        next_page(request, response, items[limit - 1]["id"] if len(items) > limit else None)
        return items[:limit]

    After = Query("", max_length=80, description="the last id of the page before (see the Link header)")

    @r.get("/access-requests", summary="My access requests and grants, as consumer or provider (paged)")
    async def my_grants(request: Request, response: Response, p: Principal = who,
                        status: str | None = Query(None, max_length=20), after: str = After,
                        limit: int = Query(1000, ge=1, le=1000)) -> list[Grant]:
        grants = (await gw.chain.query("/access/")) or {}
        mine = [g for g in grants.values() if p.member in (g["consumer"], g["provider"]) or p.role == "association_admin"]
        return page_of(request, response, [g for g in mine if status is None or g["status"] == status], after, limit)

    # -- jobs and other transactions ------------------------------------------------------------
    @r.post("/jobs", summary="Submit a job (signed jobs.Submit)")
    async def submit_job(request: Request, body: TxBody, p: Principal = who) -> TxResult:
        return await relay(request, p, body, "jobs.Submit")

    @r.get("/jobs", summary="My member's jobs, as consumer or provider (paged, in id order)")
    async def jobs(request: Request, response: Response, p: Principal = who,
                   status: str | None = Query(None, max_length=30), type: str | None = Query(None, max_length=40),  # noqa: A002
                   role: Literal["consumer", "provider"] | None = None, after: str = After,
                   limit: int = Query(50, ge=1, le=500)) -> list[JobRecord]:
        """Read from the chain's job records (all of them, then filtered: a member index on chain
        would make this cheaper). The association and its auditors see every job."""
        everyone = association_staff(p)
        found = [j for j in ((await gw.chain.query("/jobs/")) or {}).values()
                 if (everyone or p.member in j["participants"])
                 and (status is None or j["status"] == status) and (type is None or j["type"] == type)
                 and (role is None or (j["consumer"] == p.member) == (role == "consumer"))]
        return page_of(request, response, found, after, limit)

    async def visible_job(request: Request, job_id: Id, p: Principal = who) -> dict:
        mark(request, job=job_id)
        record = await gw.view.get(f"/jobs/{job_id}", fresh=True)  # proven when the gateway holds an anchor
        if record is None or not (p.member in record["participants"] or association_staff(p)):
            raise Problem(404, "Not found", f"no job {job_id} visible to {p.member}")
        return record

    @r.get("/jobs/{job_id}", summary="A job's record on chain")
    async def job(record: dict = Depends(visible_job)) -> JobRecord:
        return record

    streams: Counter[str] = Counter()  # open job streams by member (one process: a cap per replica)

    async def stream_slot(request: Request, record: dict = Depends(visible_job), p: Principal = who) -> dict:
        if streams[p.member] >= JOB_STREAMS_PER_MEMBER:
            raise Problem(429, "Too many streams", f"at most {JOB_STREAMS_PER_MEMBER} job streams open per member",
                          {"Retry-After": "5"})
        return record

    @r.get("/jobs/{job_id}/events", response_class=EventSourceResponse,
           summary="A job's record as server-sent events: now, on every change, until it ends")
    async def job_events(request: Request, job_id: Id, first: dict = Depends(stream_slot), p: Principal = who
                         ) -> AsyncIterator[ServerSentEvent]:
        """Follows the chain's record (polled here, server-side, so that a browser or member system
        need not poll): one ``job`` event now and one per change; the stream ends once the job has
        ended, or after JOB_STREAM_S (the client's EventSource reconnects and gets the record again)."""
        streams[p.member] += 1
        try:
            record, sent, until = first, None, time.monotonic() + JOB_STREAM_S
            while True:
                if record != sent:
                    yield ServerSentEvent(event="job", data=record, id=str(record.get("ended_height") or ""))
                    sent = record
                if record["status"] in JOB_ENDED or time.monotonic() > until or await request.is_disconnected():
                    return
                await asyncio.sleep(JOB_POLL_S)
                try:
                    record = await gw.view.get(f"/jobs/{job_id}", fresh=True) or sent
                except (ChainError, Problem):  # the node away or unproven for a moment: keep what was sent, ask again
                    record = sent
        finally:
            streams[p.member] -= 1

    @r.get("/assets/{asset_id}", summary="A listing's record on chain, to its owner's member and the association's staff")
    async def chain_asset(request: Request, asset_id: Id, p: Principal = who) -> dict:
        """The chain's record of a listing as it stands (every field ``assets.Update`` replaces, the
        privacy budget among them, which the catalog does not show): the portal's wizard carries it over."""
        mark(request, asset=asset_id)
        asset = await gw.view.get(f"/assets/{asset_id}", fresh=True)  # proven, with a trust anchor
        if asset is None:
            raise Problem(404, "Not found", f"no asset {asset_id}")
        if p.member != asset.get("owner") and not association_staff(p):
            raise Problem(403, "Forbidden", f"only {asset.get('owner')} and the association read {asset_id}'s record")
        return asset

    @r.get("/privacy/{asset_id}/{consumer}", summary="A listing's privacy budget: what a consumer spent and has left")
    async def privacy_budget(request: Request, asset_id: Id, consumer: Id, p: Principal = who) -> dict:
        """The chain's ``privacy-budget/`` query (issue 17), to the consumer, the listing's owner and the association."""
        mark(request, asset=asset_id)
        budget = await gw.chain.query(f"/privacy-budget/{asset_id}/{consumer}")
        asset = await gw.chain.query(f"/assets/{asset_id}") if budget is not None else None
        if asset is None or p.member not in (consumer, asset["owner"]) and not association_staff(p):
            raise Problem(404, "Not found", f"no privacy budget of {asset_id} for {consumer} visible to {p.member}")
        return budget

    @r.post("/tx", summary="Relay any other signed transaction the caller's role allows")
    async def any_tx(request: Request, body: TxBody, p: Principal = who) -> TxResult:
        return await relay(request, p, body, body.tx.type)

    @r.get("/tx/{tx_hash}", summary="A transaction's status: pending in the mempool, or committed with its result")
    async def tx_status(tx_hash: TxHash, p: Principal = who) -> TxStatus:
        """Visible to the signer's member (and the association and auditors); any other tx, like
        an unknown one, is 404. A pending tx is found among the first 100 of the node's mempool."""
        tx_hash = tx_hash.upper()

        async def indexed() -> dict | None:
            try:
                return await gw.chain.rpc("tx", hash=base64.b64encode(bytes.fromhex(tx_hash)).decode())
            except ChainError as exc:
                if "not found" not in str(exc):
                    raise Problem(503, "Chain unavailable", "the chain did not answer; retry") from None
                return None

        raw = None
        found = await indexed()
        if found is None:
            try:
                pending = (await gw.chain.rpc("unconfirmed_txs", limit="100")).get("txs") or []
            except ChainError:
                raise Problem(503, "Chain unavailable", "the chain did not answer; retry") from None
            raw = next((r for r in map(base64.b64decode, pending) if hashlib.sha256(r).hexdigest().upper() == tx_hash), None)
            status = TxStatus(tx_hash=tx_hash, status="pending")
            if raw is None:
                # CometBFT takes a committed tx out of the mempool at the commit and indexes it just
                # after: a tx committed between the two reads above is in neither for a moment.
                for delay in (0.05, 0.1, 0.2):
                    await asyncio.sleep(delay)
                    if (found := await indexed()) is not None:
                        break
        if found is not None:
            raw, result = base64.b64decode(found["tx"]), found["tx_result"]
            status = TxStatus(tx_hash=tx_hash, status="committed", height=int(found["height"]),
                              code=int(result.get("code", 0)), log=result.get("log", ""))
        if raw is None or not await may_see_tx(p, raw):
            raise Problem(404, "Not found", f"no transaction {tx_hash} visible to {p.member}")
        return status

    async def may_see_tx(p: Principal, raw: bytes) -> bool:
        if association_staff(p):
            return True
        try:
            signer = Tx.decode(raw).signer
        except TxError:
            return False
        acc = await gw.view.account(signer)
        return acc is not None and acc["member"] == p.member

    @r.get("/members", summary="The members on chain: id, name, roles, status, public key, node (paged, in id order)")
    async def members(request: Request, response: Response, p: Principal = who, after: str = After,
                      limit: int = Query(500, ge=1, le=1000)) -> list[dict]:
        """What any chain node answers anyone: the association's staff pages list members from it,
        with each member's public key and its node's account, public key and endpoint (or null)."""
        keys = {a.get("id"): a.get("public_key") for a in ((await gw.chain.query("/accounts/")) or {}).values()}

        def public(m: dict) -> dict:
            node = m.get("node")
            return {**{k: m.get(k) for k in ("id", "name", "roles", "status")}, "public_key": keys.get(m.get("id")),
                    "node": node and {"account": node.get("account"), "endpoint": node.get("endpoint"),
                                      "public_key": keys.get(node.get("account"))}}
        found = [public(m) for m in ((await gw.chain.query("/members/")) or {}).values()]
        return page_of(request, response, found, after, limit)

    @r.get("/members/{member_id}/delegates", summary="A member's delegated keys: powers, expiry, status")
    async def delegates(member_id: Id, p: Principal = who) -> list[dict]:
        """The member's delegate accounts on chain (``<member>.delegate-<label>``, ended ones too), for
        its own people and the association's staff: the portal lists them for the member's admin."""
        if p.member != member_id and not association_staff(p):
            raise Problem(403, "Forbidden", f"{p.member} may list only its own delegates")
        # One page of the accounts after "<member>.delegate-" in key order: a member has at most 16
        # delegates, and member ids hold no dot, so those that follow are its own until the prefix ends.
        prefix = f"accounts/{member_id}.delegate-"
        page = await gw.chain.query(f"/accounts/?{urlencode({'after': prefix, 'limit': 17})}")
        return [{k: a.get(k) for k in ("id", "label", "public_key", "powers", "expires_at", "status", "ended_height")}
                for key, a in sorted((page or {}).get("items", {}).items()) if key.startswith(prefix)]

    def staff_only(p: Principal, what: str) -> None:
        if not association_staff(p):
            raise Problem(403, "Forbidden", f"only the association's staff read {what}")

    @r.get("/network", summary="The chain's health, for the association's staff: latest block, validators")
    async def network(p: Principal = who) -> dict:
        """What this gateway's chain node reports (CometBFT's ``status`` and ``validators``, the first
        100): the portal's network page reads it."""
        staff_only(p, "the network's health")
        try:
            status, validators = await gw.chain.rpc("status"), await gw.chain.rpc("validators", per_page="100")
        except ChainError:
            raise Problem(503, "Chain unavailable", "the chain node did not answer; retry") from None
        sync = status["sync_info"]
        latest = int(sync["latest_block_height"])
        dead, relayed = await kafka_health(gw.settings.kafka_bootstrap, gw.settings.upstream_timeout_s, latest)
        return {"network": status["node_info"]["network"], "latest_height": latest,
                "latest_time": sync["latest_block_time"], "catching_up": bool(sync["catching_up"]),
                "validators_total": int(validators["total"]),
                "validators": [{"address": v["address"], "public_key": v["pub_key"]["value"],
                                "voting_power": int(v["voting_power"])} for v in validators["validators"]],
                "relay_height": relayed, "relay_lag": None if relayed is None else max(0, latest - relayed),
                "dead_letters": dead}

    @r.get("/accounts/{account_id}", summary="A chain account's public key and nonce")
    async def account(account_id: Id, p: Principal = who) -> Account:
        acc = await gw.view.get(f"/accounts/{account_id}", fresh=True)
        if acc is None:
            raise Problem(404, "Not found", f"no account {account_id}")
        return Account(**acc)

    @r.get("/policy", summary="The policy version in force")
    async def policy(p: Principal = who) -> PolicyDoc:
        current = await gw.view.policy()
        return PolicyDoc(version=current.version, sha256=current.sha256, text=current.text)

    @r.get("/policy/versions", summary="The policy's published versions, oldest first (the association's staff)")
    async def policy_versions(p: Principal = who) -> list[PolicyVersion]:
        """The versions the chain keeps (``policy/versions/``: those published since it keeps them, and
        the one each first publication replaced), and the version in force if not kept yet (a chain
        that has published nothing since). Without their texts: ask for one version for that."""
        staff_only(p, "the policy's versions")
        found = {d["version"]: d for d in ((await gw.chain.query("/policy/versions/")) or {}).values()}
        current = await gw.chain.query("/policy/current")
        if current is not None:
            found.setdefault(current["version"], current)
        return [PolicyVersion(version=v, sha256=d["sha256"], height=d.get("height", 0)) for v, d in sorted(found.items())]

    @r.get("/policy/versions/{version}", summary="One published version of the policy, with its text")
    async def policy_version(version: Annotated[int, Path(ge=1, le=10**12)], p: Principal = who) -> PolicyVersion:
        staff_only(p, "the policy's versions")
        doc = await gw.chain.query(f"/policy/versions/{version:012d}")
        if doc is None:
            current = await gw.chain.query("/policy/current")
            doc = current if current is not None and current["version"] == version else None
        if doc is None:
            raise Problem(404, "Not found", f"the chain keeps no policy version {version}")
        return PolicyVersion(version=doc["version"], sha256=doc["sha256"], height=doc.get("height", 0), text=doc["text"])

    # -- billing --------------------------------------------------------------------------------
    def own_books(p: Principal, member: str) -> None:
        if p.member != member and not association_staff(p):
            raise Problem(403, "Forbidden", f"{p.member} may read only its own books")

    @r.get("/billing/prices/{asset_id}", summary="An asset's price history")
    async def prices(asset_id: Id, p: Principal = who) -> list[dict]:
        return await gw.upstream("billing", f"/v1/prices/{asset_id}")

    @r.get("/billing/quote", summary="What a job on these assets would cost now")
    async def quote(p: Principal = who, asset: list[AssetId] = Query(..., max_length=16),
                    records: int = Query(0, ge=0, le=10**12)) -> dict:
        return await gw.upstream("billing", "/v1/quote", {"asset": asset, "records": records})

    @r.get("/billing/reconciliation", summary="Does billing's read model equal the chain? For the association's staff")
    async def reconciliation(p: Principal = who) -> Reconciliation:
        """The billing service runs its reconciliation on this call (its ``GET /v1/reconcile``: balances,
        escrow and credit supply against the chain); ``checked_at`` is when it answered (unix seconds)."""
        staff_only(p, "the billing reconciliation")
        found = await gw.upstream("billing", "/v1/reconcile")
        return Reconciliation(equal=found["equal"], differences=found["differences"], checked_at=time.time())

    @r.get("/billing/{kind}/{member}", summary="A member's statement, invoice or usage for a period")
    async def books(kind: Literal["statements", "invoices", "usage"], member: Id, p: Principal = who,
                    since: float | None = Query(None, ge=0, le=1e11), until: float | None = Query(None, ge=0, le=1e11)
                    ) -> dict:
        own_books(p, member)
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        return await gw.upstream("billing", f"/v1/{kind}/{member}", params)

    # -- API keys -------------------------------------------------------------------------------
    def may_manage(p: Principal, member: str, role: str | None = None) -> None:
        if p.role == "association_admin":
            return
        if p.role == "member_admin" and p.member == member and role in (None, "member_admin", "analyst",
                                                                         "compute_operator", "auditor"):
            return
        raise Problem(403, "Forbidden", f"{p.role} of {p.member} may not manage keys of {member}")

    @r.post("/keys", summary="Create an API key", status_code=201)
    async def create_key(body: NewKey, p: Principal = who) -> NewKeyResult:
        may_manage(p, body.member, body.role)
        if await gw.view.member(body.member) is None:
            raise Problem(404, "Unknown member", f"{body.member} is not a member")
        key, token = await gw.keys.create(body.member, body.role)
        return NewKeyResult(**key.__dict__, token=token)

    @r.get("/keys", summary="API keys of my member (all, for the association; paged)")
    async def list_keys(request: Request, response: Response, p: Principal = who, after: str = After,
                        limit: int = Query(1000, ge=1, le=1000)) -> list[KeyInfo]:
        member = None if p.role == "association_admin" else p.member
        if p.role not in ("association_admin", "member_admin"):
            raise Problem(403, "Forbidden", "only admins list keys")
        keys = [{"id": k.key_id, "key": k} for k in await gw.keys.list(member)]
        return [KeyInfo(**k["key"].__dict__) for k in page_of(request, response, keys, after, limit)]

    @r.delete("/keys/{key_id}", summary="Revoke an API key", status_code=204,
              description="Answers once the revocation's audit record is anchored on chain (a gateway restored "
                          "from a backup revokes again only anchored revocations), or after 10 s without it; "
                          "a key already revoked answers at once.")
    async def revoke_key(request: Request, key_id: KeyId, p: Principal = who) -> None:
        key = await gw.keys.get(key_id)
        if key is None:
            raise Problem(404, "Not found", f"no key {key_id}")
        may_manage(p, key.member)
        if key.revoked_at is not None:  # nothing revoked now: no revocation record, so no anchor to wait for
            request.state.reason = f"key {key_id} was already revoked"
            return
        await gw.keys.revoke(key_id)
        request.state.reason = REVOKED_REASON.format(key_id)

    @r.post("/keys/{key_id}/rotate", summary="Replace an API key with a new one", status_code=201)
    async def rotate_key(request: Request, key_id: KeyId, p: Principal = who) -> NewKeyResult:
        key = await gw.keys.get(key_id)
        if key is None or key.revoked_at is not None:
            raise Problem(404, "Not found", f"no live key {key_id}")
        may_manage(p, key.member, key.role)
        new, token = await gw.keys.create(key.member, key.role)
        await gw.keys.revoke(key_id)
        request.state.reason = REVOKED_REASON.format(key_id)
        return NewKeyResult(**new.__dict__, token=token)

    # -- audit ----------------------------------------------------------------------------------
    @r.get("/audit", summary="Audit records by member, asset, job, time")
    async def audit(request: Request, response: Response, p: Principal = who, member: str | None = Query(None, max_length=40),
                    asset: str | None = Query(None, max_length=80), job: str | None = Query(None, max_length=80),
                    since: float | None = Query(None, ge=0, le=1e11), until: float | None = Query(None, ge=0, le=1e11),
                    after_seq: int = Query(0, ge=0, le=2**62), limit: int = Query(100, ge=1, le=1000)
                    ) -> list[AuditRecord]:
        if p.role not in ("auditor", "association_admin", "member_admin"):
            raise Problem(403, "Forbidden", "only auditors and admins read the audit trail")
        if not association_staff(p):
            member = p.member  # a member sees its own calls only
        found = await gw.audit.query(member=member, asset=asset, job=job, since=since, until=until,
                                     after_seq=after_seq, limit=limit)
        next_page(request, response, found[-1].seq if len(found) == limit else None, "after_seq")
        return found

    @r.get("/audit/anchors", summary="The audit anchors on chain (paged by key)")
    async def anchors(request: Request, response: Response, p: Principal = who, after: str = After,
                      limit: int = Query(100_000, ge=1, le=100_000)) -> list[dict]:
        found = [{"id": key, "anchor": a} for key, a in ((await gw.chain.query("/audit/anchors/")) or {}).items()]
        return [a["anchor"] for a in page_of(request, response, found, after, limit)]

    return r


TAIL = 32  # the records read at the end of each partition of the chain events topic


async def kafka_health(bootstrap: str, timeout_s: float, latest: int) -> tuple[dict[str, int | None], int | None]:
    """What Kafka holds, for the network's health: the records in each dead-letter topic (``<topic>.dlq``
    of every event topic: its end offset less its beginning offset, summed over its partitions; a replay
    leaves its dead letter there), and the height of the last chain event the relay published (the
    greatest ``height`` among the last ``TAIL`` records of each partition of the chain events topic, so
    a record there that is not a chain event does not hide it, and a height above the chain's ``latest``,
    which no relay published, is not counted; 0 when the topic is empty). None for what
    Kafka did not answer within ``timeout_s`` or refused, and for a topic this client cannot see. Only
    offsets and those records' ``height`` are read; nothing of them is logged."""
    dead: dict[str, int | None] = {dead_letter_topic(t): None for t in EVENT_TOPICS}
    relayed: int | None = None
    options = dict(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                   **KafkaSecurity().client_options())
    admin, consumer = AIOKafkaAdminClient(**options), AIOKafkaConsumer(enable_auto_commit=False, **options)
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            # Each topic's partitions; a topic this client may not see, or that does not exist, has none.
            described = {t["topic"]: [TopicPartition(t["topic"], p["partition"]) for p in t["partitions"]]
                         for t in await admin.describe_topics([*dead, CHAIN_EVENTS]) if not t["error_code"]}
            await consumer.start()

            def partitions(topic: str) -> list[TopicPartition]:
                return sorted(described.get(topic, []), key=lambda tp: tp.partition)

            for topic in dead:
                if parts := partitions(topic):
                    try:
                        starts, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
                    except KafkaError:
                        continue
                    dead[topic] = sum(ends[tp] - starts[tp] for tp in parts)
            if parts := partitions(CHAIN_EVENTS):
                starts, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
                held = [tp for tp in parts if ends[tp] > starts[tp]]
                consumer.assign(held)
                for tp in held:
                    consumer.seek(tp, max(starts[tp], ends[tp] - TAIL))
                heights, remaining = [0], set(held)
                while remaining:
                    for tp, records in (await consumer.getmany(*remaining, timeout_ms=500)).items():
                        heights += [h for r in records if r.offset < ends[tp] and (h := event_height(r.value)) <= latest]
                    remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
                relayed = max(heights)
    except (KafkaError, TimeoutError, OSError):
        pass
    finally:
        for client in (consumer.stop, admin.close):
            try:
                await client()
            except (KafkaError, OSError):
                pass
    return dead, relayed


def event_height(raw: bytes | None) -> int:
    """A chain event's block height (the relay adds it to the event's data), 0 for a record that is not one."""
    try:
        height = Event.decode(raw).data.get("height")
    except EventDecodeError:
        return 0
    return height if isinstance(height, int) and not isinstance(height, bool) and height >= 0 else 0


async def upstream_get(client: httpx.AsyncClient, base: str, path: str, params: dict | list | None = None,
                       service: str = "upstream"):
    return await upstream_call(client, "GET", base + path, service, params=params)


async def upstream_post(client: httpx.AsyncClient, base: str, path: str, body: Any, service: str = "upstream"):
    return await upstream_call(client, "POST", base + path, service, json=body)


async def upstream_call(client: httpx.AsyncClient, method: str, url: str, service: str, **request: Any):
    try:
        resp = await client.request(method, url, **request)
    except httpx.HTTPError:
        raise Problem(503, "Upstream unavailable", "a service behind the gateway did not answer") from None
    if resp.status_code >= 500:
        raise Problem(502, "Upstream error", f"the service answered {resp.status_code}")
    if resp.status_code >= 400:
        raise upstream_problem(resp, service)
    return resp.json()


def upstream_problem(resp: httpx.Response, service: str) -> Problem:
    """The service's own explanation, passed through: the catalog's ``{"problems": [{field,
    message}]}``, billing's ``title``/``detail``, FastAPI's ``{"detail": [{loc, msg}]}``. Only
    strings, cut short, reach the caller (the services are ours, but their bodies are data here)."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    listed = next((v for k in ("errors", "problems", "detail") if isinstance(v := body.get(k), list)), [])
    errors = []
    for item in listed[:20]:
        if isinstance(item, dict):
            where = item.get("field", item.get("loc", ""))
            where = ".".join(map(str, where)) if isinstance(where, list) else str(where)
            errors.append({"field": where[:200], "message": str(item.get("message", item.get("msg", "")))[:300]})
    title = body.get("title") if isinstance(body.get("title"), str) else (
        "Not found" if resp.status_code == 404 else f"Rejected by the {service}")
    detail = body.get("detail") if isinstance(body.get("detail"), str) else "; ".join(
        f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors[:5])
    return Problem(resp.status_code, title[:200], detail[:1000] or title[:200], errors=errors or None,
                   type=f"{problems.TYPE}{service}")
