"""Webhooks end to end (issue 22's bar): members register HTTPS endpoints through the gateway with
signed requests; the chain's access events reach them through the real relay, broker and gateway,
signed as Standard Webhooks say; an endpoint down for a minute (RDX_TEST_WEBHOOK_DOWN_S) receives
every event after it returns, once each."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from test_gateway import start_gateway

from rdx.components import free_port
from rdx.sdk import Gateway, GatewayError
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.gateway.webhooks import CATEGORIES
from tests.webhookkit import Receiver

DOWN_S = float(os.environ.get("RDX_TEST_WEBHOOK_DOWN_S", "60"))  # the bar's minute
WATCHED = CATEGORIES["access"] | CATEGORIES["grants"]


class World:
    pass


@pytest.fixture(scope="module")
def w(chain, tmp_path_factory):
    root = tmp_path_factory.mktemp("webhooks")
    w = World()
    w.chain, tag = chain, f"wh{int(time.time()) % 100000}"
    w.asset = f"{tag}.l3"
    w.bank, w.telco, w.other = (Identity.generate(f"{name}-{tag}") for name in ("bank", "telco", "other"))

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((w.bank, ["consumer"]), (w.telco, ["provider"]), (w.other, ["consumer"])):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key})
            await c.submit(w.telco, "assets.List", {
                "id": w.asset, "level": "L3", "operations": ["psi"], "commitment": "ab" * 32,
                "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata(f"Data {w.asset}")})

    asyncio.run(setup())
    w.receiver = Receiver(free_port(), root)
    w.receiver.start()
    w.proc = start_gateway(chain, root, RDX_WEBHOOK_ALLOW_PRIVATE="true", RDX_WEBHOOK_CA_FILE=str(w.receiver.ca_file),
                           RDX_WEBHOOK_BACKOFF_S="0.5", RDX_WEBHOOK_BACKOFF_MAX_S="5", RDX_WEBHOOK_TIMEOUT_S="3",
                           RDX_RATE_PER_S="50", RDX_RATE_BURST="100")
    w.url = w.proc.url
    w.as_ = lambda who: Gateway(w.url, identity=who, chain_id=chain.chain_id)
    try:
        yield w
    finally:
        w.proc.stop()
        w.receiver.stop()


def wait_until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()):
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def grant_events(result: dict, grant: str) -> list[tuple[str, str]]:
    return [(e["type"], grant) for e in result["events"] if e["type"] in WATCHED]


def received(w, path: str, secret: str) -> list[dict]:
    """What the receiver got at ``path``, each checked with a Standard Webhooks library."""
    with w.receiver.lock:
        got = [(h, b) for h, b in w.receiver.received if h[":path"] == path]
    return [Webhook(secret).verify(body, headers) | {"webhook-id": headers["webhook-id"]} for headers, body in got]


def test_registration_refuses_hostile_input(w):
    telco, bank = w.as_(w.telco), w.as_(w.bank)
    for body, status in (({"url": "http://127.0.0.1:1/hook", "events": ["access"]}, 422),
                         ({"url": "https://127.0.0.1:1/hook", "events": []}, 422),
                         ({"url": "https://127.0.0.1:1/hook", "events": ["everything"]}, 422),
                         ({"url": "https://x.invalid/hook", "events": ["access"]}, 422),
                         ({"url": "https://127.0.0.1:1/hook", "events": ["access"], "member": w.telco.account}, 403)):
        with pytest.raises(GatewayError) as refused:
            bank.request("POST", "/v1/webhooks", body=body)
        assert refused.value.status == status, body
    hook = telco.request("POST", "/v1/webhooks", body={"url": w.receiver.url + "?x", "events": ["jobs"]})
    with pytest.raises(GatewayError) as hidden:  # another member's webhook is not there for bank
        bank.request("GET", f"/v1/webhooks/{hook['id']}/deliveries")
    assert hidden.value.status == 404
    assert [h["id"] for h in bank.request("GET", "/v1/webhooks")] == []
    telco.request("DELETE", f"/v1/webhooks/{hook['id']}")
    assert telco.request("GET", "/v1/webhooks") == []


def test_endpoint_down_for_a_minute_receives_every_event_once_after_it_returns(w):
    telco, bank, other = w.as_(w.telco), w.as_(w.bank), w.as_(w.other)
    hook = telco.request("POST", "/v1/webhooks", body={"url": w.receiver.url, "events": ["access", "grants"]})
    assert hook["secret"].startswith("whsec_") and hook["member"] == w.telco.account
    stranger = other.request("POST", "/v1/webhooks", body={"url": w.receiver.url.replace("/hook", "/other"),
                                                            "events": ["access", "grants"]})
    assert "secret" not in telco.request("GET", "/v1/webhooks")[0]

    # Up: the first access request arrives.
    expected = grant_events(bank.request_access(f"{w.asset}.g0", w.asset, ["psi"], "webhook test"), f"{w.asset}.g0")
    wait_until(lambda: len(received(w, "/hook", hook["secret"])) == 1, 60, "the first webhook")

    # Down: the receiver's port refuses connections while the chain goes on.
    w.receiver.stop()
    down_since = time.monotonic()
    for n in (1, 2, 3):
        grant = f"{w.asset}.g{n}"
        expected += grant_events(bank.request_access(grant, w.asset, ["psi"], "webhook test"), grant)
    expected += grant_events(telco.approve(f"{w.asset}.g1"), f"{w.asset}.g1")
    expected += grant_events(telco.reject(f"{w.asset}.g2", "not now"), f"{w.asset}.g2")
    expected += grant_events(bank.revoke(f"{w.asset}.g1", "done"), f"{w.asset}.g1")
    assert len(expected) == 8  # 4 requested, approved + granted, rejected, revoked

    def pending_and_tried():
        found = telco.request("GET", f"/v1/webhooks/{hook['id']}/deliveries", params={"status": "pending"})
        return len(found) == 7 and all(d["attempts"] >= 1 and d["last_error"] for d in found) and found
    for d in wait_until(pending_and_tried, 60, "seven failing deliveries"):
        assert d["last_error"].startswith("connection failed") and d["last_status"] is None
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_since)))

    # Back: every event arrives, once each.
    w.receiver.start()
    wait_until(lambda: len(received(w, "/hook", hook["secret"])) >= len(expected), 60, "every webhook")
    time.sleep(3)  # room for a duplicate to show up
    got = received(w, "/hook", hook["secret"])
    ids = collections.Counter(g["webhook-id"] for g in got)
    assert len(got) == len(expected) and set(ids.values()) == {1}, ids
    assert sorted((g["type"], g["data"]["grant"]) for g in got) == sorted(expected)
    assert all(g["webhook-id"] == g["id"] for g in got)
    assert received(w, "/other", stranger["secret"]) == []  # not its events

    # Visible, paged and replayable.
    page, seen, path = 0, [], f"/v1/webhooks/{hook['id']}/deliveries"
    params = {"limit": 3}
    while True:
        url = httpx.URL(w.url + path, params=params)
        resp = telco.http.request("GET", str(url), headers=httpsig.sign(w.telco, "GET", str(url), b""))
        assert resp.status_code == 200
        seen += resp.json()
        page += 1
        if "next" not in resp.links:
            break
        params = dict(httpx.URL(resp.links["next"]["url"]).params)
    assert page == 3 and len(seen) == len(expected) and {d["status"] for d in seen} == {"delivered"}
    assert len({d["id"] for d in seen}) == len(seen)  # pages neither overlap nor skip
    replayed = telco.request("POST", f"{path}/{seen[0]['id']}/replay")
    assert replayed == {"replayed": 1}
    wait_until(lambda: len(received(w, "/hook", hook["secret"])) == len(expected) + 1, 30, "the replay")
    assert received(w, "/hook", hook["secret"])[-1]["webhook-id"] == seen[0]["event_id"]


def test_delivery_payload_is_the_chain_event(w):
    """The bodies carry the chain event as the gateway read it: id, type, entity and data."""
    telco = w.as_(w.telco)
    hooks = telco.request("GET", "/v1/webhooks")
    assert hooks and all(h["member"] == w.telco.account for h in hooks)
    with w.receiver.lock:
        bodies = [json.loads(b) for h, b in w.receiver.received if h[":path"] == "/hook"]
    assert all(set(b) == {"type", "timestamp", "id", "entity", "data"} for b in bodies)
    assert all(b["entity"] == f"access:{b['data']['grant']}" for b in bodies)
