"""The gateway's read routes for the portal's staff pages, on the real chain: the network's health
(GET /v1/network: latest block and validators, from the gateway's chain node) for the association's
staff only."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import httpx
from test_gateway import start_gateway

from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity


def test_the_network_s_health_is_read_by_the_association_only(chain, tmp_path):
    bank = Identity.generate(f"bank-n{int(time.time()) % 100000}")

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            await c.submit(chain.association, "members.Register", {
                "id": bank.account, "name": bank.account, "roles": ["consumer"], "public_key": bank.public_key})
            return (await c.rpc("status"))["sync_info"], (await c.rpc("validators"))["validators"]

    before, validators = asyncio.run(setup())
    gateway = start_gateway(chain, tmp_path)
    url = f"{gateway.url}/v1/network"
    try:
        answer = httpx.get(url, headers=httpsig.sign(chain.association, "GET", url, b""))
        assert answer.status_code == 200, answer.text
        health = answer.json()
        assert health["network"] == chain.chain_id and health["catching_up"] is False
        assert health["latest_height"] >= int(before["latest_block_height"])
        block_time = datetime.fromisoformat(health["latest_time"][:19]).replace(tzinfo=timezone.utc).timestamp()
        assert abs(block_time - time.time()) < 600  # the latest block's time, not some other date
        assert health["validators_total"] == len(validators) >= 1
        assert health["validators"] == [{"address": v["address"], "public_key": v["pub_key"]["value"],
                                         "voting_power": int(v["voting_power"])} for v in validators]
        answer = httpx.get(url, headers=httpsig.sign(bank, "GET", url, b""))  # a member's admin: not its to read
        assert answer.status_code == 403
    finally:
        gateway.stop()
