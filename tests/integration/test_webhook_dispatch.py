"""The gateway's webhook outbox and delivery against a real HTTPS receiver (TLS from a throw-away
CA) and a real SQLite store: signatures a Standard Webhooks library verifies, SSRF refusals at
registration and at connection, and endpoints that are slow, huge, dripping, redirecting or failing."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook

from rdx.components import free_port
from rdx.stores import PostgresServer
from services.common.events import Event
from services.gateway.db import SqliteDatabase, open_postgres
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import (Dispatcher, EndpointRefused, WebhookStore, check_url,
                                       parties, payload)
from tests.webhookkit import Receiver


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    r = Receiver(free_port(), tmp_path_factory.mktemp("ca"))
    r.start()
    yield r
    r.stop()


@pytest.mark.parametrize("url", [
    "http://example.com/hook", "ftp://example.com/", "https://127.0.0.1/hook", "https://localhost/hook",
    "https://10.1.2.3/", "https://192.168.0.1/", "https://172.16.5.4/", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/", "https://[::ffff:127.0.0.1]/", "https://[fe80::1]/", "https://0.0.0.0/", "https://100.64.0.1/",
    "https://user:pw@example.com/", "https:///nohost", "https://example.com:99999/", "https://x.invalid/",
    "https://example.com/" + "a" * 2000, "https://exa mple.com/"])
async def test_endpoints_that_are_not_public_https_are_refused(url):
    with pytest.raises(EndpointRefused):
        await check_url(url, allow_private=False)


async def test_public_and_allowed_private_endpoints_pass():
    await check_url("https://93.184.216.34:8443/hook", allow_private=False)
    await check_url("https://127.0.0.1/hook", allow_private=True)
    with pytest.raises(EndpointRefused):  # never, even when private ones are allowed
        await check_url("https://0.0.0.0/", allow_private=True)


def event(n: int, type_: str = "AccessRequested", **data) -> Event:
    return Event(id=f"{100 + n}/0/0", type=type_, entity=f"access:g{n}", source="consensus",
                 data={"grant": f"g{n}", "consumer": "bank", "provider": "telco", **data})


async def setup(tmp_path, receiver, **options) -> tuple[WebhookStore, Dispatcher, str, str]:
    store = await WebhookStore.open(SqliteDatabase(tmp_path / f"hooks-{time.monotonic_ns()}.sqlite"))
    defaults = dict(allow_private=True, ca_file=receiver.ca_file, timeout_s=1.0, backoff_s=0.2, backoff_max_s=1.0)
    settings = GatewaySettings(**{f"webhook_{k}": v for k, v in {**defaults, **options}.items()})
    dispatcher = Dispatcher(store, settings)
    hook, secret = await store.create("telco", receiver.url, ["access", "grants"])
    return store, dispatcher, hook.id, secret


async def queue(store: WebhookStore, e: Event) -> None:
    await store.enqueue(await parties(e.data, no_lookup), e.id, e.type, e.occurred_at.timestamp(), payload(e))


async def no_lookup(path: str):
    return None


async def test_delivery_is_signed_as_standard_webhooks_and_replayable(tmp_path, receiver):
    receiver.behaviour, receiver.received[:] = "ok", []
    store, dispatcher, hook, secret = await setup(tmp_path, receiver)
    e = event(1)
    await queue(store, e)
    await queue(store, e)  # read again from Kafka: queued once
    await queue(store, event(2, "AssetListed"))  # not a type the webhook takes
    assert await dispatcher.deliver_due() == 1
    [(headers, body)] = receiver.received
    sent = Webhook(secret).verify(body, headers)  # a Standard Webhooks library accepts it
    assert sent["type"] == "AccessRequested" and sent["id"] == e.id and sent["data"]["grant"] == "g1"
    assert headers["webhook-id"] == e.id
    with pytest.raises(Exception):
        Webhook("whsec_" + "A" * 43 + "=").verify(body, headers)  # another webhook's secret does not
    [d] = await store.deliveries(hook, None)
    assert (d.status, d.attempts, d.last_status) == ("delivered", 1, 200)
    assert await dispatcher.deliver_due() == 0  # delivered once
    assert await store.replay(hook, d.id) == 1
    assert await dispatcher.deliver_due() == 1
    assert receiver.ids() == [e.id, e.id]  # the same webhook-id: the receiver applies it once
    await dispatcher.close()


async def test_only_the_events_of_the_webhooks_member_since_it_exists(tmp_path, receiver):
    store, dispatcher, hook, _ = await setup(tmp_path, receiver)
    other = event(3, consumer="bank", provider="someone-else")
    old = Event(id="1/0/0", type="AccessRequested", entity="access:g0", source="consensus",
                occurred_at=datetime.fromtimestamp(time.time() - 3600, timezone.utc),
                data={"consumer": "bank", "provider": "telco"})
    for e in (other, old):
        await queue(store, e)
    assert await store.deliveries(hook, None) == []
    await dispatcher.close()


async def test_private_address_is_refused_when_connecting(tmp_path, receiver):
    receiver.received[:] = []
    store, dispatcher, hook, _ = await setup(tmp_path, receiver, allow_private=False)  # registered before
    await queue(store, event(4))
    await dispatcher.deliver_due()
    [d] = await store.deliveries(hook, None)
    assert d.status == "pending" and d.attempts == 1 and "private" in d.last_error
    assert receiver.received == []
    await dispatcher.close()


@pytest.mark.parametrize("behaviour", ["slow", "drip"])
async def test_slow_answers_end_at_the_deadline(tmp_path, receiver, behaviour):
    receiver.behaviour = behaviour
    store, dispatcher, hook, _ = await setup(tmp_path, receiver, timeout_s=1.0)
    await queue(store, event(5))
    started = time.monotonic()
    await dispatcher.deliver_due()
    assert time.monotonic() - started < 3
    [d] = await store.deliveries(hook, None)
    assert d.status == "pending" and d.last_error.startswith("no complete answer")
    receiver.behaviour = "ok"
    await dispatcher.close()


async def test_a_huge_answer_is_not_read(tmp_path, receiver):
    receiver.behaviour = "huge"
    store, dispatcher, hook, _ = await setup(tmp_path, receiver, max_response_bytes=64 << 10, timeout_s=5.0)
    await queue(store, event(6))
    started = time.monotonic()
    await dispatcher.deliver_due()
    assert time.monotonic() - started < 3  # 50 MB were offered; 64 KiB read
    [d] = await store.deliveries(hook, None)
    assert d.status == "delivered"
    receiver.behaviour = "ok"
    await dispatcher.close()


async def test_redirects_are_not_followed_and_failures_back_off_then_give_up(tmp_path, receiver):
    receiver.behaviour, receiver.received[:] = "redirect", []
    store, dispatcher, hook, _ = await setup(tmp_path, receiver, backoff_s=0.2, backoff_max_s=0.4, give_up_s=2.0)
    await queue(store, event(7))
    await dispatcher.deliver_due()
    [d] = await store.deliveries(hook, None)
    assert (d.status, d.last_status, d.last_error) == ("pending", 302, "answered 302") and len(receiver.received) == 1
    receiver.behaviour = "error"
    waits = []
    while d.status == "pending":
        waits.append(d.next_attempt_at - time.time())
        await asyncio.sleep(max(0.0, waits[-1]) + 0.05)
        await dispatcher.deliver_due()
        [d] = await store.deliveries(hook, None)
    assert d.status == "failed" and d.last_status == 500 and d.attempts >= 3
    assert all(w <= 0.45 for w in waits)  # the backoff's cap
    assert [x.id for x in await store.deliveries(hook, "failed")] == [d.id]
    receiver.behaviour = "ok"
    assert await store.replay(hook, since=0) == 1
    await dispatcher.deliver_due()
    [d] = await store.deliveries(hook, None)
    assert d.status == "delivered"
    assert json.loads(receiver.received[-1][1])["id"] == event(7).id
    await dispatcher.close()


async def test_replicas_on_postgresql_queue_once_and_deliver_once(tmp_path, receiver):
    """Two gateways on one PostgreSQL database: both read every event (a rebalance, a redelivery),
    both deliver at once; each event is queued once and reaches the receiver once."""
    pg = PostgresServer(tmp_path)
    pg.start()
    dbs = [await open_postgres(pg.url) for _ in range(2)]
    try:
        stores = await asyncio.gather(*(WebhookStore.open(db) for db in dbs))
        settings = GatewaySettings(webhook_allow_private=True, webhook_ca_file=receiver.ca_file, webhook_timeout_s=5.0)
        dispatchers = [Dispatcher(store, settings) for store in stores]
        receiver.behaviour, receiver.received[:] = "ok", []
        hook, secret = await stores[0].create("telco", receiver.url, ["access"])
        events = [event(100 + n) for n in range(40)]
        await asyncio.gather(*(queue(store, e) for e in events for store in stores))
        while sum(await asyncio.gather(*(d.deliver_due() for d in dispatchers))):
            pass
        assert sorted(receiver.ids()) == sorted(e.id for e in events)  # each once
        for headers, body in receiver.received:
            Webhook(secret).verify(body, headers)
        first, second = await stores[1].deliveries(hook.id, "delivered", limit=25), []
        second = await stores[1].deliveries(hook.id, "delivered", after=first[-1].id, limit=25)
        assert len(first) == 25 and len(second) == 15 and not {d.id for d in first} & {d.id for d in second}
        for d in dispatchers:
            await d.close()
    finally:
        for db in dbs:
            await db.close()
        pg.stop()
