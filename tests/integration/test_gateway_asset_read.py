"""The gateway's GET /v1/assets/{id} on the real chain: a listing's record as the chain keeps it, its
privacy budget among its fields (the catalog does not show it; the portal's wizard carries it over into
the listing's next version), for its owner's member and the association's staff only."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
from test_gateway import start_gateway

from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata

BUDGET = {"epsilon_milli": 2500, "period_s": 86400}


def test_a_listing_s_chain_record_is_read_by_its_owner_and_the_association(chain, tmp_path):
    tag = f"ar{int(time.time()) % 100000}"
    telco, bank = Identity.generate(f"telco-{tag}"), Identity.generate(f"bank-{tag}")
    asset = f"{telco.account}.stats"
    listing = {"id": asset, "level": "L3", "operations": ["aggregation"],
               "commitment": hashlib.sha256(b"rows").hexdigest(), "price": {"model": "fixed", "amount": 10},
               "metadata": example_metadata("Regional statistics")}

    async def setup() -> int:
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((telco, ["provider"]), (bank, ["consumer", "provider"])):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key})
            return (await c.submit(telco, "assets.List", {**listing, "privacy_budget": BUDGET})).height

    listed = asyncio.run(setup())
    gateway = start_gateway(chain, tmp_path)

    def get(who: Identity, asset_id: str = asset) -> httpx.Response:
        url = f"{gateway.url}/v1/assets/{asset_id}"
        return httpx.get(url, headers=httpsig.sign(who, "GET", url, b""), timeout=30)

    try:
        mine = get(telco)
        assert mine.status_code == 200, mine.text
        record = mine.json()
        assert (record["id"], record["owner"], record["version"], record["status"]) == (asset, telco.account, 1, "listed")
        assert record["privacy_budget"] == BUDGET and record["height"] == listed
        assert {k: record[k] for k in ("level", "operations", "commitment", "price")} == \
            {k: listing[k] for k in ("level", "operations", "commitment", "price")}
        assert get(chain.association).json() == record  # the association's staff
        refused = get(bank)  # another member's admin (a provider too): not its record to read
        assert refused.status_code == 403 and "privacy_budget" not in refused.text
        assert get(telco, f"{telco.account}.none").status_code == 404

        # Why the portal carries the budget over: an update without it drops it from the chain's record;
        # one that carries it keeps it.
        async def update(with_budget: bool) -> None:
            async with ChainClient(chain.rpc_url, chain.chain_id) as c:
                await c.submit(telco, "assets.Update", {**listing, **({"privacy_budget": BUDGET} if with_budget else {})})

        asyncio.run(update(True))
        assert wait_for(lambda: get(telco).json(), lambda r: r["version"] == 2)["privacy_budget"] == BUDGET
        asyncio.run(update(False))
        assert "privacy_budget" not in wait_for(lambda: get(telco).json(), lambda r: r["version"] == 3)
    finally:
        gateway.stop()


def wait_for(read, done, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        found = read()
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)
