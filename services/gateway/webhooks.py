"""Webhooks: members' HTTPS endpoints told of the chain events that concern them.

How it holds together (docs/gateway.md, "Webhooks"):

- **Durable outbox in the gateway's own store.** The gateway consumes ``rdx.chain.events.v1``
  (each event checked against its chain node first, so a forged record is never forwarded) and
  writes one delivery row per (webhook, event) into its database — the SQLite file of a single
  gateway, or the PostgreSQL database replicas share. The row's key makes the write idempotent:
  an event read twice (a redelivery, a rebalance between replicas) is queued once. A member's
  endpoint that is down loses nothing: the row stays until it is delivered or given up on.
- **Delivery.** A loop claims due rows under ``locked("webhooks")`` (one replica at a time claims a
  row: it moves the row's next attempt past the attempt's deadline), POSTs them, and marks each
  delivered on a 2xx, or schedules the next attempt with exponential backoff and jitter. A row
  still undelivered ``give_up_s`` after it was queued is ``failed``; any row can be replayed.
- **Signed as Standard Webhooks say** (the ``standardwebhooks`` package, HMAC-SHA256 with a secret
  per webhook, given once at registration): ``webhook-id`` is the chain event's id, the same on
  every attempt and replay, so the receiver applies each event once however often it arrives.
- **SSRF.** Only ``https://`` URLs; every address a host resolves to must be public unless the
  operator allows private ones (``RDX_WEBHOOK_ALLOW_PRIVATE``). The check is made at registration
  and again at each connection, on the address actually connected to (a network backend for
  httpcore), so a name that later resolves to an internal address is refused too. Redirects are
  not followed; each attempt has a deadline and reads at most ``max_response_bytes``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import httpcore
from standardwebhooks.webhooks import Webhook as StandardWebhook

from services.common.files import read_regular, reason
from services.gateway.db import Database
from services.gateway.settings import GatewaySettings

log = logging.getLogger("rdx.gateway.webhooks")

# What a member subscribes to, and the chain events each name stands for.
CATEGORIES: dict[str, frozenset[str]] = {
    "access": frozenset({"AccessRequested"}),
    "grants": frozenset({"AccessApproved", "AccessGranted", "AccessRejected", "AccessRevoked", "AccessExpired"}),
    "jobs": frozenset({"JobAuthorized", "JobAttested", "JobCompleted", "JobFailed", "JobAborted", "JobLocked",
                       "JobReleased", "JobRecordsDisputed"}),
    "statements": frozenset({"EscrowHeld", "JobSettled", "CreditsDeposited", "CreditsWithdrawn",
                             "CreditsTransferred"}),
}
EVENT_TYPES = frozenset().union(*CATEGORIES.values())
PARTY_FIELDS = ("consumer", "provider", "member", "sender", "to")
RESOLVE_TIMEOUT_S = 5.0


class EndpointRefused(ValueError):
    """A webhook URL the gateway will not call; the message says why and is safe to show."""


# -- where a webhook may point ------------------------------------------------------------------
def _address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_multicast or ip.is_unspecified:
        return False
    return ip.is_global or allow_private


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """Every address ``host`` resolves to, or EndpointRefused if there is none or any is not allowed
    (all, not the first: a name with one public and one internal address is refused)."""
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM),
                                       RESOLVE_TIMEOUT_S)
    except (socket.gaierror, UnicodeError):
        raise EndpointRefused(f"{host} does not resolve") from None
    except asyncio.TimeoutError:  # a member's slow name server must not hold a request or a delivery
        raise EndpointRefused(f"{host} did not resolve within {RESOLVE_TIMEOUT_S:g} s") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise EndpointRefused(f"{host} does not resolve")
    for address in addresses:
        if not _address_allowed(address, allow_private):
            raise EndpointRefused(f"{host} resolves to a private, loopback or link-local address; refused")
    return addresses


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of an acceptable webhook URL, or EndpointRefused."""
    if len(url) > 2000:
        raise EndpointRefused("the URL is longer than 2000 characters")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise EndpointRefused("not a valid URL") from None
    if parts.scheme != "https":
        raise EndpointRefused("webhook URLs must be https://")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise EndpointRefused("the URL needs a host and no user name or password")
    if parts.fragment or any(c.isspace() or ord(c) < 32 for c in url):
        raise EndpointRefused("the URL has a fragment or control characters")
    return parts.hostname, port


async def check_url(url: str, allow_private: bool) -> None:
    host, port = parse_url(url)
    await resolve(host, port, allow_private)


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own network backend, but it connects only to an address that passed the check,
    the one it resolved itself: no window between checking a name and connecting to it. TLS still
    verifies the certificate against the URL's host name (httpcore passes it as server_hostname)."""

    def __init__(self, allow_private: bool):
        self.allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = await resolve(host, port, self.allow_private)
        except EndpointRefused as exc:
            raise httpcore.ConnectError(str(exc)) from None
        return await self._inner.connect_tcp(addresses[0], port, timeout=timeout, local_address=local_address,
                                             socket_options=socket_options)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("webhooks are not delivered over Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# -- the store ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    id: str
    member: str
    url: str
    events: list[str]
    created_at: float


@dataclass(frozen=True)
class Delivery:
    id: str
    webhook: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    created_at: float
    next_attempt_at: float | None
    delivered_at: float | None
    last_status: int | None
    last_error: str | None


DELIVERY_COLUMNS = ("id, webhook, event_id, event_type, status, attempts, created_at, next_attempt_at, "
                    "delivered_at, last_status, last_error")


def delivery_id(webhook: str, event_id: str) -> str:
    return hashlib.sha256(f"{webhook}\n{event_id}".encode()).hexdigest()[:32]


class WebhookStore:
    """Webhooks and their deliveries in the gateway's database (either engine, one SQL dialect)."""

    def __init__(self, db: Database):
        self.db = db

    @classmethod
    async def open(cls, db: Database) -> "WebhookStore":
        async with db.locked("schema") as tx:
            await tx.execute("""CREATE TABLE IF NOT EXISTS webhooks (
                id TEXT PRIMARY KEY, member TEXT NOT NULL, url TEXT NOT NULL, events TEXT NOT NULL,
                secret TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)""")
            await tx.execute("""CREATE TABLE IF NOT EXISTS webhook_deliveries (
                id TEXT PRIMARY KEY, webhook TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL,
                status TEXT NOT NULL, attempts INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                next_attempt_at DOUBLE PRECISION, delivered_at DOUBLE PRECISION, last_status INTEGER,
                last_error TEXT, payload TEXT NOT NULL)""")
            await tx.execute("CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries"
                             "(status, next_attempt_at)")
            await tx.execute("CREATE INDEX IF NOT EXISTS webhook_deliveries_by_hook ON webhook_deliveries"
                             "(webhook, created_at, id)")
        return cls(db)

    # webhooks
    async def create(self, member: str, url: str, events: list[str]) -> tuple[Endpoint, str]:
        """The new webhook and its signing secret (``whsec_…``), which is shown once."""
        hook = Endpoint("wh_" + secrets.token_hex(8), member, url, sorted(set(events)), time.time())
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        await self.db.execute("INSERT INTO webhooks VALUES (?, ?, ?, ?, ?, ?)",
                              (hook.id, member, url, ",".join(hook.events), secret, hook.created_at))
        return hook, secret

    @staticmethod
    def _endpoint(row) -> Endpoint:
        return Endpoint(row[0], row[1], row[2], row[3].split(","), row[4])

    async def get(self, hook_id: str) -> Endpoint | None:
        rows = await self.db.fetch("SELECT id, member, url, events, created_at FROM webhooks WHERE id = ?", (hook_id,))
        return self._endpoint(rows[0]) if rows else None

    async def list(self, member: str | None, after: str = "", limit: int = 100) -> list[Endpoint]:
        where, args = ("WHERE member = ? AND id > ?", [member, after]) if member else ("WHERE id > ?", [after])
        rows = await self.db.fetch(f"SELECT id, member, url, events, created_at FROM webhooks {where} "
                                   "ORDER BY id LIMIT ?", (*args, limit))
        return [self._endpoint(r) for r in rows]

    async def any(self) -> bool:
        return bool(await self.db.fetch("SELECT 1 FROM webhooks LIMIT 1"))

    async def count(self, member: str) -> int:
        return (await self.db.fetch("SELECT COUNT(*) FROM webhooks WHERE member = ?", (member,)))[0][0]

    async def delete(self, hook_id: str) -> None:
        async with self.db.locked("webhooks") as tx:
            await tx.execute("DELETE FROM webhook_deliveries WHERE webhook = ?", (hook_id,))
            await tx.execute("DELETE FROM webhooks WHERE id = ?", (hook_id,))

    # deliveries
    async def enqueue(self, parties: Iterable[str], event_id: str, event_type: str, occurred_at: float,
                      payload: str) -> None:
        """One delivery per webhook of a party that subscribed to this type and existed when the
        event happened; an event queued before is not queued again."""
        members = sorted(set(parties))
        if not members:
            return
        marks = ", ".join("?" for _ in members)
        hooks = await self.db.fetch(f"SELECT id, events, created_at FROM webhooks WHERE member IN ({marks})", members)
        now = time.time()
        for hook_id, events, created_at in hooks:
            if not any(event_type in CATEGORIES.get(name, ()) for name in events.split(",")):
                continue
            if occurred_at < created_at - 5:  # a consumer catching up does not send a new webhook the past
                continue
            await self.db.execute(
                "INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, NULL, NULL, NULL, ?) "
                "ON CONFLICT (id) DO NOTHING",
                (delivery_id(hook_id, event_id), hook_id, event_id, event_type, now, now, payload))

    async def claim(self, now: float, lease_s: float, limit: int) -> list[tuple[Delivery, str, str, str]]:
        """Due deliveries with their URL, secret and payload, each leased to this caller until
        ``now + lease_s`` (another replica does not claim them meanwhile)."""
        async with self.db.locked("webhooks") as tx:
            rows = await tx.fetch(
                f"SELECT {', '.join('d.' + c for c in DELIVERY_COLUMNS.split(', '))}, h.url, h.secret, d.payload "
                "FROM webhook_deliveries d JOIN webhooks h ON h.id = d.webhook "
                "WHERE d.status = 'pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
                (now, limit))
            for row in rows:
                await tx.execute("UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                                 (now + lease_s, row[0]))
        return [(Delivery(*row[:11]), row[11], row[12], row[13]) for row in rows]

    async def delivered(self, d: Delivery, status: int) -> None:
        await self.db.execute("UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, "
                              "delivered_at = ?, next_attempt_at = NULL, last_status = ?, last_error = NULL "
                              "WHERE id = ?", (time.time(), status, d.id))

    async def retry(self, d: Delivery, at: float | None, status: int | None, error: str) -> None:
        """Another attempt at ``at``; None: given up (``failed``)."""
        await self.db.execute("UPDATE webhook_deliveries SET status = ?, attempts = attempts + 1, "
                              "next_attempt_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                              ("pending" if at is not None else "failed", at, status, error[:300], d.id))

    async def deliveries(self, hook_id: str, status: str | None, after: str = "", limit: int = 100
                         ) -> list[Delivery]:
        """In the order they were queued; ``after`` is the last id of the page before."""
        args: list = [hook_id]
        sql = f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook = ?"
        if status:
            sql, args = sql + " AND status = ?", args + [status]
        if after:
            sql += (" AND (created_at, id) > (SELECT created_at, id FROM webhook_deliveries WHERE id = ?)")
            args.append(after)
        rows = await self.db.fetch(sql + " ORDER BY created_at, id LIMIT ?", (*args, limit))
        return [Delivery(*r) for r in rows]

    async def delivery(self, hook_id: str, did: str) -> Delivery | None:
        rows = await self.db.fetch(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook = ? AND id = ?",
                                   (hook_id, did))
        return Delivery(*rows[0]) if rows else None

    async def replay(self, hook_id: str, did: str | None = None, since: float = 0.0) -> int:
        """Sends again (the same ``webhook-id``) one delivery, or every one queued since ``since``."""
        now = time.time()
        where, args = ("webhook = ? AND id = ?", [hook_id, did]) if did else ("webhook = ? AND created_at >= ?",
                                                                              [hook_id, since])
        async with self.db.locked("webhooks") as tx:
            [(n,)] = await tx.fetch(f"SELECT COUNT(*) FROM webhook_deliveries WHERE {where}", args)
            await tx.execute(f"UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ? WHERE {where}",
                             (now, *args))
        return n


# -- which members an event concerns --------------------------------------------------------------
Lookup = Callable[[str], Awaitable[dict | None]]


async def parties(data: dict, lookup: Lookup) -> set[str]:
    """The members an event concerns: those it names (consumer, provider, payees …) and the
    parties of the grant or job it is about, as the chain records them."""
    found = {v for k in PARTY_FIELDS if isinstance(v := data.get(k), str)}
    if isinstance(data.get("payouts"), dict):
        found |= {k for k in data["payouts"] if isinstance(k, str)}
    if isinstance(grant := data.get("grant"), str):
        record = await lookup(f"/access/{grant}") or {}
        found |= {record.get("consumer"), record.get("provider")} - {None}
    if isinstance(job := data.get("job"), str):
        found |= set((await lookup(f"/jobs/{job}") or {}).get("participants") or [])
    return found


def payload(event) -> str:
    """The body members receive: the Standard Webhooks shape (``type``, ``timestamp``, ``data``)
    with the chain event's id and entity."""
    return json.dumps({"type": event.type, "timestamp": event.occurred_at.isoformat(), "id": event.id,
                       "entity": event.entity, "data": event.data}, separators=(",", ":"), sort_keys=True)


# -- delivery -----------------------------------------------------------------------------------
MAX_CA_FILE_BYTES = 1 << 20


def tls_context(settings: GatewaySettings) -> ssl.SSLContext:
    """The system's CAs and RDX_WEBHOOK_CA_FILE's, or SystemExit saying what is wrong with that file:
    not a regular file (a FIFO would hold the start forever), too large, or no PEM certificate. The
    reasons of OpenSSL are named by type only."""
    context = ssl.create_default_context()
    path = settings.webhook_ca_file
    if path is None:
        return context
    try:
        context.load_verify_locations(cadata=read_regular(path, MAX_CA_FILE_BYTES).decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:  # not ASCII, no certificate, a damaged one (SSLError first: an OSError)
        raise SystemExit(f"RDX_WEBHOOK_CA_FILE: {path} is not PEM CA certificates ({type(exc).__name__})") from None
    except OSError as exc:
        raise SystemExit(f"RDX_WEBHOOK_CA_FILE: {path} {reason(exc)}") from None
    return context


class Dispatcher:
    """Delivers due rows as the ``webhook_*`` settings say (services/gateway/settings.py)."""

    BATCH, CONCURRENCY, POLL_S = 50, 8, 1.0  # rows claimed at once, attempts at once, idle wait

    def __init__(self, store: WebhookStore, settings: GatewaySettings, context: ssl.SSLContext | None = None):
        """``context``: tls_context(settings), made once at start (default: made here)."""
        self.store, self.s = store, settings
        context = context or tls_context(settings)
        self.pool = httpcore.AsyncConnectionPool(ssl_context=context, max_connections=self.CONCURRENCY * 4,
                                                 network_backend=_CheckedBackend(settings.webhook_allow_private),
                                                 keepalive_expiry=30.0)

    async def close(self) -> None:
        await self.pool.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = await self.deliver_due()
            except Exception as exc:  # noqa: BLE001 - the store away (503 elsewhere) must not stop the gateway
                log.warning("webhook deliveries not claimed: %s", type(exc).__name__)
                done = 0
            if not done:
                try:
                    await asyncio.wait_for(stop.wait(), self.POLL_S)
                except asyncio.TimeoutError:
                    pass

    async def deliver_due(self) -> int:
        lease = self.s.webhook_timeout_s * 2 + 5
        claimed = await self.store.claim(time.time(), lease, self.BATCH)
        gate = asyncio.Semaphore(self.CONCURRENCY)

        async def one(item) -> None:
            async with gate:
                await self._attempt(*item)

        await asyncio.gather(*(one(item) for item in claimed))
        return len(claimed)

    async def _attempt(self, d: Delivery, url: str, secret: str, body: str) -> None:
        stamp = datetime.now(timezone.utc)
        headers = [(b"content-type", b"application/json"), (b"user-agent", b"rdx-webhooks/1"),
                   (b"webhook-id", d.event_id.encode()), (b"webhook-timestamp", str(int(stamp.timestamp())).encode()),
                   (b"webhook-signature", StandardWebhook(secret).sign(d.event_id, stamp, body).encode())]
        status, error = None, ""
        try:
            status = await asyncio.wait_for(self._post(url, headers, body.encode()), self.s.webhook_timeout_s)
        except asyncio.TimeoutError:
            error = f"no complete answer within {self.s.webhook_timeout_s:g} s"
        except httpcore.ConnectError as exc:
            error = f"connection failed: {str(exc)[:200] or type(exc).__name__}"
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            error = f"{type(exc).__name__}"
        except httpcore.UnsupportedProtocol:
            error = "unsupported URL"
        except Exception as exc:  # noqa: BLE001 - one endpoint's oddity is its delivery's error, not the loop's
            error = f"{type(exc).__name__}"
        if status is not None and 200 <= status < 300:
            await self.store.delivered(d, status)
            return
        if status is not None:
            error = f"answered {status}"
        elapsed = time.time() - d.created_at
        delay = min(self.s.webhook_backoff_max_s, self.s.webhook_backoff_s * 2 ** min(d.attempts, 30)) * random.uniform(0.5, 1.0)
        give_up = elapsed + delay > self.s.webhook_give_up_s
        await self.store.retry(d, None if give_up else time.time() + delay, status, error)
        log.info("webhook delivery %s attempt %d: %s", d.id, d.attempts + 1, error)

    async def _post(self, url: str, headers: list, body: bytes) -> int:
        timeout = {"connect": self.s.webhook_timeout_s, "read": self.s.webhook_timeout_s, "write": self.s.webhook_timeout_s,
                   "pool": self.s.webhook_timeout_s}
        async with self.pool.stream("POST", url, headers=headers, content=body,
                                    extensions={"timeout": timeout}) as resp:
            read = 0
            async for chunk in resp.aiter_stream():  # the answer is not used: read a little, then hang up
                read += len(chunk)
                if read > self.s.webhook_max_response_bytes:
                    break
            return resp.status
