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


def test_the_policy_s_versions_are_read_by_the_association_s_staff(chain, tmp_path):
    """GET /v1/policy/versions and /v1/policy/versions/{v} on the real chain: a version the association
    publishes is listed with its height and read back with its text, as is the one it replaced."""
    bank = Identity.generate(f"bank-p{int(time.time()) % 100000}")

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            await c.submit(chain.association, "members.Register", {
                "id": bank.account, "name": bank.account, "roles": ["consumer"], "public_key": bank.public_key})
            current = await c.query("/policy/current")
            text = current["text"] + f"\n// republished unchanged by {bank.account}\n"
            done = await c.submit(chain.association, "governance.PublishPolicy",
                                  {"version": current["version"] + 1, "text": text})
            return current, text, done.height

    before, text, height = asyncio.run(setup())
    gateway = start_gateway(chain, tmp_path)

    def get(who: Identity, path: str) -> httpx.Response:
        url = f"{gateway.url}/v1{path}"
        return httpx.get(url, headers=httpsig.sign(who, "GET", url, b""))

    try:
        listed = get(chain.association, "/policy/versions")
        assert listed.status_code == 200, listed.text
        versions = {v["version"]: v for v in listed.json()}
        new = before["version"] + 1
        assert list(versions) == sorted(versions) and max(versions) == new
        assert versions[new]["height"] == height and versions[new]["text"] is None  # the list leaves texts out
        assert versions[before["version"]]["sha256"] == before["sha256"]
        one = get(chain.association, f"/policy/versions/{new}").json()
        assert one["text"] == text and one["version"] == new and one["sha256"] == versions[new]["sha256"]
        assert get(chain.association, f"/policy/versions/{before['version']}").json()["text"] == before["text"]
        assert get(chain.association, f"/policy/versions/{new + 5}").status_code == 404
        assert get(chain.association, "/policy/versions/abc").status_code == 422
        assert get(bank, "/policy/versions").status_code == 403  # a member's admin: not its to read
        assert get(bank, f"/policy/versions/{new}").status_code == 403
    finally:
        gateway.stop()
