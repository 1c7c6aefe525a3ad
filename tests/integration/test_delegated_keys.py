"""A member's delegated key on the real chain, through the real gateway: the member delegates with
its own key, an analyst holding only the delegate's key asks for access and submits a job that
the chain accepts and escrows from the member's balance (the member delegates with the
member CLI, the analyst uses rdx_client); the delegate's key rotation is refused by
the gateway and by the chain; once undelegated, the key opens nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import rdx_client
from test_gateway import start_gateway

from rdx.sdk import key_of
from services.common import httpsig
from services.common.chain import ChainClient, TxRejected
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code

COMMIT = "ab" * 32


def test_an_analyst_submits_a_job_with_a_delegated_key_and_nothing_else(chain, tmp_path):
    tag = f"d{int(time.time()) % 100000}"
    bank, telco = Identity.generate(f"bank-{tag}"), Identity.generate(f"telco-{tag}")
    analyst = Identity.generate(f"bank-{tag}.delegate-analyst")
    asset, grant, job = f"{tag}.l3", f"{tag}.g1", f"{tag}.j1"

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((bank, ["consumer"]), (telco, ["provider"])):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key,
                    "node": {"public_key": Identity.generate(f"{who.account}.node").public_key,
                             "endpoint": "127.0.0.1:50051"}})
            await c.submit(chain.association, "bank.Deposit", {"to": bank.account, "amount": 1_000, "reference": tag})
            await c.submit(telco, "assets.List", {
                "id": asset, "level": "L3", "operations": ["psi"], "commitment": COMMIT,
                "price": {"model": "fixed", "amount": 100}, "metadata": example_metadata(f"Data {tag}")})

    asyncio.run(setup())
    gateway = start_gateway(chain, tmp_path)
    member = rdx_client.Client(gateway.url, key=key_of(bank), chain_id=chain.chain_id)
    person = rdx_client.Client(gateway.url, key=key_of(analyst), chain_id=chain.chain_id)
    provider = rdx_client.Client(gateway.url, key=key_of(telco), chain_id=chain.chain_id)
    try:
        bank.save(tmp_path / "bank.json")  # the member CLI, as the member's admin runs it
        env = {**os.environ, "RDX_GATEWAY": gateway.url, "RDX_CHAIN_ID": chain.chain_id,
               "RDX_KEY_FILE": str(tmp_path / "bank.json")}
        env.pop("RDX_API_KEY", None)
        cli = subprocess.run([sys.executable, "-m", "rdx", "keys", "delegate", "analyst", "--public-key",
                              analyst.public_key, "--power", "jobs.Submit", "--power", "access.Request", "--days", "7",
                              "--json"], capture_output=True, text=True, env=env, timeout=120)
        assert cli.returncode == 0, cli.stderr
        assert [e["type"] for e in json.loads(cli.stdout)["events"]] == ["KeyDelegated"]
        account = person.account(analyst.account)
        assert (account.kind, account.member, account.nonce) == ("delegate", bank.account, 0)

        # The analyst's signed requests act as the member's analyst; its txs as the member.
        requested = person.request_access(grant, asset, ["psi"], "joint marketing", max_runs=2)
        assert [e["type"] for e in requested.events] == ["AccessRequested"]
        provider.approve(grant)
        submitted = person.submit_job(job, "psi", [{"asset": asset, "grant": grant}], max_price=150)
        assert "JobAuthorized" in [e["type"] for e in submitted.events]
        assert person.job(job).consumer == bank.account

        async def state(key: str):
            async with ChainClient(chain.rpc_url, chain.chain_id) as c:
                return await c.query(key)

        assert asyncio.run(state(f"/bank/escrow/{job}"))["amount"] == 150  # escrowed from the member's credits
        assert asyncio.run(state(f"/bank/balance/{bank.account}")) == 1_000 - 150
        assert person.account(analyst.account).nonce == 2 and member.account(bank.account).nonce == 1

        # Its signed requests are the member's analyst's, never its admin's: no API keys, say.
        with pytest.raises(rdx_client.ApiError) as refused:
            person.create_key(bank.account, "member_admin")
        assert refused.value.status == 403

        # Outside its powers: the gateway refuses before the chain, and the chain refuses it too.
        rotated = Identity.generate(analyst.account).public_key
        with pytest.raises(rdx_client.ApiError) as refused:
            person.send("members.RotateKey", {"public_key": rotated})
        assert (refused.value.status, refused.value.title) == (403, "Forbidden")  # the gateway's, not the chain's
        assert "may sign only access.Request, jobs.Submit" in refused.value.detail
        assert person.account(analyst.account).nonce == 2

        async def direct(who: Identity, type_: str, payload: dict) -> TxRejected:
            async with ChainClient(chain.rpc_url, chain.chain_id) as c:
                with pytest.raises(TxRejected) as rejected:
                    await c.submit(who, type_, payload)
                return rejected.value

        rejected = asyncio.run(direct(analyst, "members.RotateKey", {"public_key": rotated}))
        assert rejected.code == Code.UNAUTHORIZED and "not members.RotateKey" in rejected.log
        assert person.account(analyst.account).public_key == analyst.public_key

        # Undelegated: its signed requests and its txs open nothing.
        assert [e["type"] for e in member.undelegate(analyst.account).events] == ["KeyUndelegated"]
        url = f"{gateway.url}/v1/policy"
        deadline = time.monotonic() + 10  # the gateway's view of the chain is at most 2 s old
        while (resp := httpx.get(url, headers=httpsig.sign(analyst, "GET", url, b""))).status_code == 200:
            assert time.monotonic() < deadline, "the gateway still takes an undelegated key"
            time.sleep(0.5)
        assert resp.status_code == 401 and resp.json()["title"] == "Key not active"
        rejected = asyncio.run(direct(analyst, "jobs.Submit", {
            "id": f"{tag}.j2", "type": "psi", "inputs": [{"asset": asset, "grant": grant}], "max_price": 150,
            "params": {}, "timeout_s": 600}))
        assert rejected.code == Code.UNAUTHORIZED and "undelegated" in rejected.log
    finally:
        for client in (member, person, provider):
            client.close()
        gateway.stop()
