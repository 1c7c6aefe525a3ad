"""The gateway wired together: authentication, rate limits, the policy, the audit trail, the API."""

from __future__ import annotations

import logging
import re
import time
import uuid

import httpx
from fastapi import Request
from prometheus_client import Counter

from services.common import tracing
from services.common.chain import ChainClient
from services.common.chainevents import ChainEventVerifier
from services.common.events import CHAIN_EVENTS, Event
from services.common.files import load_identity, reason, warn_if_world_readable
from services.common.identity import Identity
from services.common.kafka import IdempotentConsumer
from services.common.service import Service
from services.gateway import openapi, problems, views, webhooks, webhooks_api
from services.gateway.audit import AuditLog, AuditShipper, restore_anchored
from services.gateway.auth import Authenticator, LocalReplayCache, Principal, RedisReplayCache, ReplayCache
from services.gateway.chainview import ChainView
from services.gateway.db import SqliteDatabase, StoreUnavailable, open_postgres, open_redis
from services.gateway.keys import KeyStore
from services.gateway.limits import LocalRateLimiter, RateLimiter, RedisRateLimiter
from services.gateway.settings import GatewaySettings

log = logging.getLogger("rdx.gateway")
DECISIONS = Counter("rdx_policy_decisions_total", "gateway decisions", ["decision"])
AUDITED_PREFIX = "/v1/"
# A key revocation's response waits this long at most for its audit record's anchor (AuditShipper.anchored_through).
REVOCATION_ANCHOR_WAIT_S = 10.0
# A caller's own X-Request-Id is kept only if it is a plain token: it goes back in a header, into
# every problem's instance and into the audit trail, where control bytes and other text do not belong.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def _own_identity(settings: GatewaySettings) -> Identity | None:
    """The key of RDX_KEY_FILE, or SystemExit saying what is wrong with the file, never what it holds
    (a FIFO there would hold the start forever, /dev/zero fill the gateway's memory)."""
    path = settings.key_file
    if path is None:
        return None
    try:
        identity = load_identity(path)
    except OSError as exc:
        raise SystemExit(f"RDX_KEY_FILE: {path} {reason(exc)}") from None
    warn_if_world_readable(path, "RDX_KEY_FILE", log)
    return identity


class Gateway:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.svc = Service(settings, title="rdx gateway", version="1")
        self.keys: KeyStore | None = None  # opened at startup: the database may be a server
        self.audit: AuditLog | None = None
        self._stores: list = []
        self.chain: ChainClient | None = None
        self.http: httpx.AsyncClient | None = None
        self.identity = _own_identity(settings)
        self._webhook_tls = webhooks.tls_context(settings)  # a bad RDX_WEBHOOK_CA_FILE stops the start here
        producer = self.svc.producer()
        self.shipper: AuditShipper | None = None
        self.webhooks: webhooks.WebhookStore | None = None
        self.dispatcher: webhooks.Dispatcher | None = None
        self.webhook_events: IdempotentConsumer | None = None
        self._producer = producer
        self.svc.on_startup(self._start)
        self.svc.on_shutdown(self._stop)
        self.svc.task("audit", lambda stop: self.shipper.run(stop))
        self.svc.task("webhook-events", lambda stop: self.webhook_events.run(stop))
        self.svc.task("webhook-deliveries", lambda stop: self.dispatcher.run(stop))
        problems.install(self.svc.app)
        self._middleware()
        # The middleware refuses a declared Content-Length past the limit; a body without one (chunked)
        # is counted as each route reads it, and a 413 (problems.py) ends the read at the limit.
        limit = settings.max_body_bytes
        self.svc.app.include_router(views.router(self), max_body_size=limit)
        self.svc.app.include_router(webhooks_api.router(self), max_body_size=limit)
        openapi.install(self.svc.app)

    async def _open_stores(self) -> tuple[ReplayCache, RateLimiter]:
        s = self.settings
        database = s.gateway_database_url.get_secret_value() if s.gateway_database_url else None
        if database:
            key_db = audit_db = hook_db = await open_postgres(database)
            self._stores.append(key_db)
        else:  # one gateway: its files, as before replication existed
            key_db, audit_db, hook_db = (SqliteDatabase(s.state_dir / f"{name}.sqlite")
                                         for name in ("keys", "audit", "webhooks"))
            self._stores += [key_db, audit_db, hook_db]
        self.keys, self.audit = await KeyStore.open(key_db), await AuditLog.open(audit_db)
        self.webhooks = await webhooks.WebhookStore.open(hook_db)
        redis_url = s.gateway_redis_url.get_secret_value() if s.gateway_redis_url else None
        if not redis_url:
            return (LocalReplayCache(s.clock_skew_s),
                    LocalRateLimiter(s.rate_per_s, s.rate_burst, s.daily_quota))
        client = await open_redis(redis_url, s.upstream_timeout_s)
        self._stores.append(client)
        return (RedisReplayCache(client, s.clock_skew_s),
                RedisRateLimiter(client, s.rate_per_s, s.rate_burst, s.daily_quota))

    async def _start(self) -> None:
        replays, self.limiter = await self._open_stores()
        self.chain = ChainClient(self.settings.cometbft_rpc, self.settings.chain_id,
                                 timeout=self.settings.upstream_timeout_s)
        self.view = ChainView(self.chain)
        self.http = httpx.AsyncClient(timeout=self.settings.upstream_timeout_s,  # catalog and billing only
                                      event_hooks={"request": [tracing.inject_httpx]})
        self.authenticator = Authenticator(self.keys, self.view, self.settings.clock_skew_s,
                                           self.settings.bootstrap_key_sha256, replays)
        if self.identity is not None:  # a database restored from before the last anchor: before any call is recorded
            await self._revoke_again(await restore_anchored(self.audit, self.chain, self.settings.kafka_bootstrap))
        self.shipper = AuditShipper(self.audit, self._producer, self.chain, self.identity,
                                    self.settings.anchor_every_s, self.settings.anchor_max_records)
        await self._start_webhooks()

    async def _revoke_again(self, records) -> None:
        """The API keys that audit records taken back from the topic say were revoked: a key store
        restored with the trail from before them holds those keys live again."""
        for record in records:
            if revoked := views.revoked_key(record):
                key = await self.keys.get(revoked)
                if key is not None and key.revoked_at is None:
                    await self.keys.revoke(revoked)
                    log.warning("API key %s revoked again: the audit trail taken back shows its revocation "
                                "(record %d), which the restored key store did not hold", revoked, record.seq)

    async def _start_webhooks(self) -> None:
        """The chain events members subscribed to, into the webhook outbox, and its delivery loop.
        One consumer group per gateway database (named after its audit trail's instance), so
        replicas share the events and another gateway's database does not take them."""
        s = self.settings
        self.dispatcher = webhooks.Dispatcher(self.webhooks, s, self._webhook_tls)
        self.webhook_events = IdempotentConsumer(
            s.kafka_bootstrap, "gateway", [CHAIN_EVENTS], f"gateway-webhooks-{self.audit.instance}",
            s.state_dir / "webhook-events.sqlite", self._on_event, max_attempts=10, retry_backoff_s=0.5,
            verifier=ChainEventVerifier(self.chain, reader=self.view.reader),  # the ChainView's light client
            verify_if=lambda e: e.type in webhooks.EVENT_TYPES)
        await self.webhook_events.start()

    async def _on_event(self, event: Event, _conn) -> None:
        if event.type in webhooks.EVENT_TYPES and await self.webhooks.any():  # no webhook: no party look-ups
            members = await webhooks.parties(event.data, self.chain.query)
            await self.webhooks.enqueue(members, event.id, event.type, event.occurred_at.timestamp(),
                                        webhooks.payload(event))

    async def _stop(self) -> None:
        if self.webhook_events:
            await self.webhook_events.stop()
        if self.dispatcher:
            await self.dispatcher.close()
        if self.http:
            await self.http.aclose()
        if self.chain:
            await self.chain.close()
        for store in self._stores:
            await (store.aclose() if hasattr(store, "aclose") else store.close())

    async def authenticate(self, request: Request) -> Principal:
        principal = await self.authenticator(request)
        wait = await self.limiter.take(principal.member)
        if wait is not None:
            raise problems.Problem(429, "Too many requests", f"rate limit or daily quota of {principal.member}",
                                   {"Retry-After": str(max(1, int(wait + 0.999)))})
        return principal

    async def upstream(self, service: str, path: str, params: dict | None = None):
        base = {"catalog": self.settings.catalog_url, "billing": self.settings.billing_url}[service]
        return await views.upstream_get(self.http, base, path, params, service)

    def _middleware(self) -> None:
        app, limit = self.svc.app, self.settings.max_body_bytes

        @app.middleware("http")
        async def audit_and_limits(request: Request, call_next):
            given = request.headers.get("x-request-id", "")[:64]
            request.state.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
            started = time.perf_counter()
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                response = problems.problem_response(request, 413, "Payload too large",
                                                     f"request bodies are limited to {limit} bytes")
            else:
                response = await call_next(request)
            response.headers["X-Request-Id"] = request.state.request_id
            if request.url.path.startswith(AUDITED_PREFIX):
                try:
                    await self._record(request, response.status_code, time.perf_counter() - started)
                except StoreUnavailable:  # the call happened; the missing record is logged, not hidden
                    log.error("audit record of request %s not stored: database unavailable", request.state.request_id)
            return response

    async def _record(self, request: Request, status: int, seconds: float) -> None:
        principal: Principal | None = getattr(request.state, "principal", None)
        decision = "allow" if status < 400 else "error" if status >= 500 else "deny"
        DECISIONS.labels(decision).inc()
        route = request.scope.get("route")
        record = await self.audit.append({
            "ts": time.time(), "request_id": request.state.request_id,
            "member": principal.member if principal else None, "role": principal.role if principal else None,
            "key_id": principal.key_id if principal else None, "method": request.method,
            "route": getattr(route, "path", request.url.path[:200]),
            "asset": getattr(request.state, "asset", None), "job": getattr(request.state, "job", None),
            "decision": decision, "reason": getattr(request.state, "reason", "")[:300], "status": status,
            "latency_ms": round(seconds * 1000, 3)})
        if self.shipper is not None:
            self.shipper.submit(record)
            if self.identity is not None and views.revoked_key(record) and \
                    not await self.shipper.anchored_through(record.seq, REVOCATION_ANCHOR_WAIT_S):
                log.warning("API key revocation (audit record %d) not anchored within %.0f s: a gateway restored from "
                            "a backup before its anchor would hold the key live again", record.seq,
                            REVOCATION_ANCHOR_WAIT_S)
