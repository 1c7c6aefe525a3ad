"""The gateway's GET /v1/network on a real chain and a real broker: besides the chain node's status, the
dead letters each dead-letter topic holds and the relay's lag (the chain's latest height less the height
of the last chain event the relay published), for the association's staff only.

The module runs its own broker and chain (as tests/conftest.py starts the shared ones), so that the
chain events topic holds only this chain's events and the dead-letter topics start empty."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import start_chain
from kafkakit import send_raw
from test_gateway import start_gateway

from rdx.components import KafkaBroker, free_port
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.events import AUDIT, CHAIN_EVENTS, JOB_STATUS, TOPICS, Event
from services.common.identity import Identity

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def own_chain(toolchain, tmp_path_factory):
    root = tmp_path_factory.mktemp("network-health")
    broker = KafkaBroker(root / "kafka", toolchain, port=free_port(), controller_port=free_port())
    broker.prepare()
    broker.start()
    try:
        broker.create_topics(TOPICS)
        chain = start_chain(toolchain, broker, root / "chain", Identity.generate("association"))
        try:
            yield chain
        finally:
            chain.node.stop()
            chain.consensus.stop()
    finally:
        broker.stop()


def test_dead_letters_and_relay_lag_for_the_association_s_staff(own_chain, tmp_path):
    chain = own_chain
    bank = Identity.generate(f"bank-h{int(time.time()) % 100000}")

    async def register() -> int:
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            done = await c.submit(chain.association, "members.Register", {
                "id": bank.account, "name": bank.account, "roles": ["consumer"], "public_key": bank.public_key})
            return done.height

    registered = asyncio.run(register())
    gateway = start_gateway(chain, tmp_path)
    url = f"{gateway.url}/v1/network"

    def health(who: Identity = chain.association) -> httpx.Response:
        return httpx.get(url, headers=httpsig.sign(who, "GET", url, b""), timeout=30)

    def until(check, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            answer = health()
            assert answer.status_code == 200, answer.text
            if check(answer.json()) or time.monotonic() > deadline:
                return answer.json()
            time.sleep(0.5)

    try:
        dlq = {f"{t}.dlq" for t in (CHAIN_EVENTS, AUDIT, JOB_STATUS)}
        first = until(lambda h: (h["relay_height"] or 0) >= registered)
        assert first["dead_letters"] == {t: 0 for t in dlq}
        assert registered <= first["relay_height"] <= first["latest_height"]
        assert first["relay_lag"] == first["latest_height"] - first["relay_height"]

        # A tx now: the relay publishes its events, and the lag read just after is a few blocks (a block
        # every 100 ms here, with events or not; the lag counts blocks since the last published event).
        later = asyncio.run(register_again(chain))
        after = until(lambda h: (h["relay_height"] or 0) >= later)
        assert later <= after["relay_height"] <= after["latest_height"]
        assert after["relay_lag"] == after["latest_height"] - after["relay_height"]
        assert 0 <= after["relay_lag"] < 100, after

        # A record that is not an event, on the chain events topic: the gateway's own consumer (members'
        # webhooks) dead-letters it to rdx.chain.events.v1.dlq. And one written straight to another.
        asyncio.run(send_raw(chain.kafka, CHAIN_EVENTS, b"not json", key=b"asset:x"))
        asyncio.run(send_raw(chain.kafka, f"{JOB_STATUS}.dlq", b"{}", key=b"job:x"))
        counted = until(lambda h: h["dead_letters"][f"{CHAIN_EVENTS}.dlq"] == 1)
        assert counted["dead_letters"] == {f"{CHAIN_EVENTS}.dlq": 1, f"{AUDIT}.dlq": 0, f"{JOB_STATUS}.dlq": 1}
        # The poison is now the last record of the chain events topic: the relay's height still shows.
        assert counted["relay_height"] >= after["relay_height"] and counted["relay_lag"] >= 0

        # A forged chain event from a block far ahead (anyone who may write to the topic could send one):
        # no relay published it, so it neither shows as the relay's height nor hides the lag.
        forged = Event(id="forged-1", type="MemberRegistered", entity="member:x", source="relay",
                       data={"height": counted["latest_height"] + 10**6})
        asyncio.run(send_raw(chain.kafka, CHAIN_EVENTS, forged.encode(), key=b"member:x"))
        time.sleep(1)
        ahead = health().json()
        assert ahead["relay_height"] <= ahead["latest_height"] and ahead["relay_height"] >= counted["relay_height"]
        assert ahead["relay_lag"] == ahead["latest_height"] - ahead["relay_height"]

        assert health(bank).status_code == 403  # a member's admin: not its to read
    finally:
        gateway.stop()


async def register_again(chain) -> int:
    other = Identity.generate(f"shop-h{int(time.time() * 1000) % 10**7}")
    async with ChainClient(chain.rpc_url, chain.chain_id) as c:
        done = await c.submit(chain.association, "members.Register", {
            "id": other.account, "name": other.account, "roles": ["consumer"], "public_key": other.public_key})
        return done.height
