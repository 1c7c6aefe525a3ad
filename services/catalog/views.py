"""The catalog's HTTP API (the gateway fronts it): thin routes that validate, call the domain
functions and map their errors. Every error body is ``{"problems": [{"field", "message"}]}``.

Reads are plain ``def`` routes: FastAPI runs them in its thread pool, each thread with its
own read-only SQLite connection, so a search never blocks the event loop the consumer runs on.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.catalog import dcat, drafts, listings, search
from services.catalog.facets import FacetCache
from services.catalog.ingest import Ingest
from services.catalog.models import (DraftRequest, ListingDetail, SearchResponse, SignedTx, SubmitResponse,
                                     TxResponse, ValidateResponse, VersionRecord)
from services.catalog.store import Readers
from services.common import policy as policies
from services.common.chain import ChainClient, ChainError, TxRejected
from services.common.listing import field_path
from services.common.tx import Tx, TxError

ASSET_ID = r"^[a-z0-9][a-z0-9.\-]{2,79}$"
MAX_VALUES, MAX_VALUE_LENGTH = 20, 100


def problems(status: int, *items: tuple[str, str], **extra: Any) -> JSONResponse:
    return JSONResponse({"problems": [{"field": f, "message": m} for f, m in items], **extra}, status_code=status)


@dataclass
class Catalog:
    """What the routes need: the read side, the writer's state, the chain, the policy in force."""

    readers: Readers
    cache: FacetCache
    ingest: Ingest | None
    chain: ChainClient | None
    chain_id: str
    base_url: str
    policy_ttl_s: float = 30.0
    _policy: tuple[float, policies.Policy] | None = field(default=None, init=False)

    async def policy(self) -> policies.Policy:
        """The classification policy on chain (cached briefly); the default if the chain is away."""
        now = time.monotonic()
        if self._policy is not None and now - self._policy[0] < self.policy_ttl_s:
            return self._policy[1]
        current = self._policy[1] if self._policy else policies.Policy()
        if self.chain is not None:
            try:
                doc = await self.chain.query("/policy/current")
                if doc and doc.get("text"):
                    current = policies.Policy(doc["text"], doc.get("version", 1))
            except (ChainError, policies.PolicyError, ValueError):
                pass  # keep the last known (or the default) policy
        self._policy = (now, current)
        return current


def install(app, catalog: Catalog) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        items = []
        for err in exc.errors():
            loc = tuple(err["loc"][1:]) if err["loc"] and err["loc"][0] in ("query", "path", "body") else err["loc"]
            items.append((field_path(loc) or "request", err["msg"]))
        return problems(422, *items)

    app.include_router(router(catalog))


def router(catalog: Catalog) -> APIRouter:
    api = APIRouter(prefix="/v1")

    # -- drafts ---------------------------------------------------------------------------------
    async def _verdict(req: DraftRequest) -> drafts.Verdict:
        asset_id = req.listing.get("id") if isinstance(req.listing, dict) else None
        known = None
        if isinstance(asset_id, str):
            known = await asyncio.to_thread(lambda: listings.existing(catalog.readers.get(), asset_id))
        return drafts.validate(req.listing, today=datetime.now(timezone.utc).date(), policy=await catalog.policy(),
                               tx_type=req.type, signer=req.signer, existing=known)

    @api.post("/drafts/validate", response_model=ValidateResponse, tags=["drafts"])
    async def validate_draft(req: DraftRequest) -> dict[str, Any]:
        """Check a listing draft against the listing contract and the catalog's rules, field by field."""
        verdict = await _verdict(req)
        policy = await catalog.policy()
        return {"valid": verdict.valid, "problems": verdict.problems, "approvals": verdict.approvals,
                "payload": verdict.draft.payload() if verdict.valid else None, "policy_version": policy.version}

    @api.post("/drafts/tx", response_model=TxResponse, tags=["drafts"],
              responses={422: {"description": "the draft has problems (field by field)"}})
    async def draft_tx(req: DraftRequest) -> Any:
        """The canonical unsigned ``assets.List``/``assets.Update`` for the provider to sign with its own key."""
        if not req.signer:
            return problems(422, ("signer", "is required: the member account that will sign"))
        verdict = await _verdict(req)
        if not verdict.valid:
            return JSONResponse({"valid": False, "problems": verdict.problems}, status_code=422)
        nonce = req.nonce
        if nonce is None:
            if catalog.chain is None:
                return problems(503, ("nonce", "the chain is not configured; pass the signer's next nonce"))
            try:
                nonce = await catalog.chain.next_nonce(req.signer)
            except ChainError as exc:
                return problems(503, ("nonce", f"cannot read the signer's nonce from the chain ({exc}); pass it"))
        try:
            unsigned = drafts.unsigned_tx(verdict.draft, tx_type=req.type, signer=req.signer, chain_id=catalog.chain_id,
                                          nonce=nonce)
        except ValidationError as exc:
            return problems(422, *((field_path(e["loc"]) or "tx", e["msg"]) for e in exc.errors()))
        return {"valid": True, "approvals": verdict.approvals, **unsigned}

    @api.post("/drafts/submit", response_model=SubmitResponse, tags=["drafts"],
              responses={409: {"description": "the chain refused the transaction"},
                         422: {"description": "the listing has problems (field by field)"}})
    async def submit(signed: SignedTx, wait: bool = Query(True, description="answer once committed")) -> Any:
        """Relay a provider-signed listing tx to the chain, after checking the listing once more."""
        if signed.type not in drafts.TX_TYPES:
            return problems(422, ("type", f"must be one of {', '.join(drafts.TX_TYPES)}"))
        if signed.chain_id != catalog.chain_id:
            return problems(422, ("chain_id", f"this exchange's chain is {catalog.chain_id}"))
        verdict = await _verdict(DraftRequest(type=signed.type, signer=signed.signer, listing=signed.payload))
        if not verdict.valid:
            return JSONResponse({"valid": False, "problems": [
                {"field": f"payload.{p['field']}", "message": p["message"]} for p in verdict.problems]},
                status_code=422)
        try:
            tx = Tx.model_validate(signed.model_dump())
            raw = tx.encode()
        except (ValidationError, TxError) as exc:
            return problems(422, ("tx", f"not a valid transaction envelope: {type(exc).__name__}"))
        if catalog.chain is None:
            return problems(503, ("chain", "the chain is not configured"))
        try:
            checked = await catalog.chain.broadcast(raw)
            if checked["code"] != 0:
                return problems(409, ("tx", checked.get("log", "")), code=checked["code"], tx_hash=tx.hash)
            if not wait:
                return {"tx_hash": tx.hash, "height": None, "committed": False}
            committed = await catalog.chain.wait_for(tx.hash)
        except TxRejected as exc:
            return problems(409, ("tx", exc.log), code=exc.code, tx_hash=exc.tx_hash, height=exc.height)
        except ChainError as exc:
            return problems(503, ("chain", str(exc)))
        return {"tx_hash": committed.tx_hash, "height": committed.height, "committed": True}

    # -- search and listings --------------------------------------------------------------------
    def _found(read, asset_id: str, missing: tuple[str, str], *args: Any) -> Any:
        """``read(conn, asset_id, *args)``, or a 404 naming ``missing`` (field, message)."""
        try:
            return read(catalog.readers.get(), asset_id, *args)
        except listings.NotFound:
            return problems(404, missing)

    @api.get("/listings", response_model=SearchResponse, tags=["listings"])
    def search_listings(
        q: str | None = Query(None, max_length=500, description="words (all required), \"phrases\", prefix*"),
        level: list[str] = Query([]), industry: list[str] = Query([]), tag: list[str] = Query([]),
        region: list[str] = Query([]), provider: list[str] = Query([]), operation: list[str] = Query([]),
        update_cycle: list[str] = Query([]), price_model: list[str] = Query([]),
        price_band: list[str] = Query([], description="free, 1-99, 100-999, 1000-9999, 10000+"),
        price_min: int | None = Query(None, ge=0), price_max: int | None = Query(None, ge=0),
        sort: Literal[search.SORTS] | None = Query(None, description="default: relevance with q, newest without"),
        limit: int = Query(20, ge=1, le=100),
        cursor: str | None = Query(None, max_length=1000),
        facets: bool = Query(True, description="include facet counts"),
    ) -> Any:
        """Full-text search of listed listings with highlights, facet counts, filters, sorting and a cursor."""
        filters = {"level": level, "industry": industry, "tag": tag, "region": region, "provider": provider,
                   "operation": operation, "update_cycle": update_cycle, "price_model": price_model,
                   "price_band": price_band}
        for name, values in filters.items():
            if len(values) > MAX_VALUES or any(len(v) > MAX_VALUE_LENGTH for v in values):
                return problems(400, (name, f"at most {MAX_VALUES} values of at most {MAX_VALUE_LENGTH} characters"))
        query = search.Query(q=q, filters={k: tuple(v) for k, v in filters.items() if v}, price_min=price_min,
                             price_max=price_max, sort=sort, limit=limit, cursor=cursor, facets=facets)
        try:
            return search.search(catalog.readers.get(), catalog.cache, query)
        except search.BadQuery as exc:
            name, _, message = str(exc).partition(": ")
            return problems(400, (name, message))

    @api.get("/listings/{asset_id}", response_model=ListingDetail, tags=["listings"],
             responses={404: {"description": "no such listing"}})
    def listing(asset_id: str = Path(pattern=ASSET_ID)) -> Any:
        """A listing (delisted ones too) with the on-chain proof of every version and its grant and usage counts."""
        return _found(listings.detail, asset_id, ("asset_id", f"no listing {asset_id}"))

    @api.get("/listings/{asset_id}/versions", response_model=list[VersionRecord], tags=["listings"],
             responses={404: {"description": "no such listing"}})
    def listing_versions(asset_id: str = Path(pattern=ASSET_ID)) -> Any:
        """Every version as committed on chain, oldest first."""
        return _found(listings.versions, asset_id, ("asset_id", f"no listing {asset_id}"))

    @api.get("/listings/{asset_id}/versions/{number}", response_model=VersionRecord, tags=["listings"],
             responses={404: {"description": "no such version"}})
    def listing_version(asset_id: str = Path(pattern=ASSET_ID), number: int = Path(ge=1)) -> Any:
        return _found(listings.version, asset_id, ("number", f"no version {number} of {asset_id}"), number)

    @api.get("/catalog.jsonld", tags=["export"], response_class=JSONResponse,
             responses={200: {"content": {"application/ld+json": {}}}})
    def catalog_jsonld(limit: int = Query(500, ge=1, le=dcat.MAX_PAGE),
                       cursor: str | None = Query(None, max_length=400)) -> Any:
        """The catalog as DCAT-AP 3 JSON-LD, in pages (hydra:next links the next one)."""
        try:
            doc = dcat.export(catalog.readers.get(), catalog.base_url, limit=limit, cursor=cursor)
        except ValueError as exc:
            name, _, message = str(exc).partition(": ")
            return problems(400, (name, message))
        return JSONResponse(doc, media_type="application/ld+json")

    @api.get("/status", tags=["operations"])
    def status() -> dict[str, Any]:
        """The read model: how many listings, events applied, and whether it has caught up."""
        out = listings.status(catalog.readers.get())
        if catalog.ingest is not None:
            out.update(model_id=catalog.ingest.model_id, consumer_group=catalog.ingest.group,
                       caught_up=catalog.ingest.caught_up)
        return out

    return api
