"""The gateway's list of a member's delegated keys, on the real chain: the member's own people and the
association see them (ended ones too), another member gets 403."""

from __future__ import annotations

import asyncio
import time

import httpx
from test_gateway import start_gateway

from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity


def test_a_member_s_delegates_are_listed_for_it_and_the_association_only(chain, tmp_path):
    tag = f"l{int(time.time()) % 100000}"
    bank, telco = Identity.generate(f"bank-{tag}"), Identity.generate(f"telco-{tag}")
    first, second = (Identity.generate(f"bank-{tag}.delegate-{label}") for label in ("ana", "bob"))
    expires = int(time.time()) + 7 * 86400

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who in (bank, telco):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": ["consumer"], "public_key": who.public_key})
            await c.submit(bank, "members.Delegate", {"label": "ana", "public_key": first.public_key,
                                                      "powers": ["jobs.Submit"], "expires_at": expires})
            await c.submit(bank, "members.Delegate", {"label": "bob", "public_key": second.public_key,
                                                      "powers": ["access.Request", "jobs.Submit"], "expires_at": expires})
            await c.submit(bank, "members.Undelegate", {"account": second.account})

    asyncio.run(setup())
    gateway = start_gateway(chain, tmp_path)
    url = f"{gateway.url}/v1/members/{bank.account}/delegates"
    try:
        for reader in (bank, first, chain.association):  # the member, its delegate (its analyst), the association
            answer = httpx.get(url, headers=httpsig.sign(reader, "GET", url, b""))
            assert answer.status_code == 200, answer.text
            assert answer.json() == [
                {"id": first.account, "label": "ana", "public_key": first.public_key, "powers": ["jobs.Submit"],
                 "expires_at": expires, "status": "active", "ended_height": None},
                {"id": second.account, "label": "bob", "public_key": second.public_key,
                 "powers": ["access.Request", "jobs.Submit"], "expires_at": expires, "status": "ended",
                 "ended_height": answer.json()[1]["ended_height"]}]
            assert answer.json()[1]["ended_height"] > 0
        answer = httpx.get(url, headers=httpsig.sign(telco, "GET", url, b""))
        assert answer.status_code == 403
        other = f"{gateway.url}/v1/members/{telco.account}/delegates"
        assert httpx.get(other, headers=httpsig.sign(telco, "GET", other, b"")).json() == []
    finally:
        gateway.stop()
