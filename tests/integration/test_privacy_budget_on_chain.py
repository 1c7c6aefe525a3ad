"""The privacy budget on the real chain and gateway (issue 17): a job past a listing's budget is
refused on chain with PRIVACY_BUDGET_EXCEEDED and what is left; the budget is visible through the
gateway to the consumer, the listing's owner and the association, and to nobody else."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from rdx.components import ServiceProcess, free_port
from rdx.sdk import Gateway, GatewayError
from services.common.chain import ChainClient, TxRejected
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Code

ADMIN_TOKEN = "rdx_bootstrap.test-admin-token-not-a-secret"


def test_a_job_past_the_budget_is_refused_on_chain_and_the_budget_shows_through_the_gateway(chain, tmp_path):
    tag = f"pb{int(time.time()) % 100000}"
    bank, telco, other = (Identity.generate(f"{m}-{tag}") for m in ("bank", "telco", "other"))
    asset = f"{tag}.credit"

    async def setup_and_spend() -> tuple[list[str], TxRejected]:
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            a = chain.association
            for who, roles in ((bank, ["consumer"]), (telco, ["provider"]), (other, ["consumer"])):
                await c.submit(a, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key,
                    "node": {"public_key": Identity.generate(f"{who.account}.node").public_key,
                             "endpoint": "127.0.0.1:1"}})
            await c.submit(a, "bank.Deposit", {"to": bank.account, "amount": 10_000, "reference": tag})
            await c.submit(telco, "assets.List", {
                "id": asset, "level": "L3", "operations": ["aggregation"], "commitment": "ab" * 32,
                "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata("Credit lines"),
                "privacy_budget": {"epsilon_milli": 2_500, "period_s": 86_400}})
            await c.submit(bank, "access.Request", {"id": f"{tag}.g", "asset": asset, "operations": ["aggregation"],
                                                    "purpose": "credit statistics", "expires_at": 4_000_000_000,
                                                    "max_runs": 10})
            await c.submit(telco, "access.Approve", {"id": f"{tag}.g"})
            ok = []
            for i in range(2):
                await c.submit(bank, "jobs.Submit", {"id": f"{tag}.j{i}", "type": "aggregation", "max_price": 10,
                                                     "inputs": [{"asset": asset, "grant": f"{tag}.g"}],
                                                     "params": {"columns": ["amount"]}})
                ok.append(f"{tag}.j{i}")
            try:
                await c.submit(bank, "jobs.Submit", {"id": f"{tag}.j2", "type": "aggregation", "max_price": 10,
                                                     "inputs": [{"asset": asset, "grant": f"{tag}.g"}],
                                                     "params": {"columns": ["amount"]}})
            except TxRejected as exc:
                return ok, exc
            raise AssertionError("the third job was accepted past the budget")

    ok, refused = asyncio.run(setup_and_spend())
    assert refused.code == Code.PRIVACY_BUDGET_EXCEEDED
    assert "has 500 of 2500 left" in str(refused), str(refused)

    async def on_chain():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            return ([await c.query(f"/jobs/{j}") for j in ok], await c.query(f"/jobs/{tag}.j2"),
                    await c.query(f"/privacy-budget/{asset}/{bank.account}"))

    jobs, third, budget = asyncio.run(on_chain())
    assert all(j is not None for j in jobs) and third is None
    assert budget["spent_milli"] == 2_000 and budget["remaining_milli"] == 500

    proc = ServiceProcess("gateway", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
        "RDX_STATE_ROOT": str(tmp_path / "state"),
        "RDX_BOOTSTRAP_KEY_SHA256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}, tmp_path / "logs")
    proc.start()
    path = f"/v1/privacy/{asset}/{bank.account}"
    try:
        for who in (bank, telco):
            with Gateway(proc.url, identity=who, chain_id=chain.chain_id) as g:
                seen = g.request("GET", path)
                assert seen["spent_milli"] == 2_000 and seen["remaining_milli"] == 500, seen
                assert seen["budget"] == {"epsilon_milli": 2_500, "period_s": 86_400}
        with Gateway(proc.url, api_key=ADMIN_TOKEN, chain_id=chain.chain_id) as admin:
            assert admin.request("GET", path)["remaining_milli"] == 500
        with Gateway(proc.url, identity=other, chain_id=chain.chain_id) as g:
            for bad in (path, f"/v1/privacy/{tag}.nope/{bank.account}", f"/v1/privacy/{asset}/NOPE",
                        f"/v1/privacy/{asset}/{'x' * 100}"):
                with pytest.raises(GatewayError) as err:
                    g.request("GET", bad)
                assert err.value.status in (404, 422), (bad, err.value.status)
    finally:
        proc.stop()
