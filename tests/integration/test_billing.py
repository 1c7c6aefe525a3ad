"""The billing service on the real chain and broker: a three-provider job settles on chain (its
attestations signed by the participants' node keys), the statements of the consumer, the
providers and the association add up, and the reconciliation proves the read model equals the
chain's balances."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest

from rdx.components import ServiceProcess, free_port
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata

COMMIT, RESULT = "ab" * 32, "cd" * 32


@pytest.fixture(scope="module")
def billing(chain, tmp_path_factory):
    root = tmp_path_factory.mktemp("billing")
    env = {"RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
           "RDX_STATE_ROOT": str(root / "state")}
    proc = ServiceProcess("billing", free_port(), env, root / "logs")
    proc.start()
    try:
        yield proc, env
    finally:
        proc.stop()


async def three_provider_job(chain, tag: str) -> dict:
    a = chain.association
    consumer, cn = Identity.generate(f"{tag}-bank"), Identity.generate(f"{tag}-bank.node")
    providers = [(Identity.generate(f"{tag}-p{i}"), Identity.generate(f"{tag}-p{i}.node")) for i in range(3)]
    async with ChainClient(chain.rpc_url, chain.chain_id) as c:
        for who, node, roles in [(consumer, cn, ["consumer"])] + [(p, n, ["provider"]) for p, n in providers]:
            await c.submit(a, "members.Register", {"id": who.account, "name": who.account, "roles": roles,
                                                   "public_key": who.public_key,
                                                   "node": {"public_key": node.public_key, "endpoint": "127.0.0.1:1"}})
        await c.submit(a, "bank.Deposit", {"to": consumer.account, "amount": 10_000, "reference": f"{tag}-wire"})
        inputs = []
        for i, (p, _) in enumerate(providers):
            asset, grant = f"{tag}.credit-{i}", f"{tag}.g{i}"
            await c.submit(p, "assets.List", {"id": asset, "level": "L3", "operations": ["aggregation"],
                                              "commitment": COMMIT, "price": {"model": "per_record", "amount": 3 + i},
                                              "metadata": example_metadata(f"Credit data {i}", row_count=400)})
            await c.submit(consumer, "access.Request", {"id": grant, "asset": asset, "operations": ["aggregation"],
                                                        "purpose": "joint credit statistics",
                                                        "expires_at": int(time.time()) + 3600, "max_runs": 5})
            await c.submit(p, "access.Approve", {"id": grant})
            inputs.append({"asset": asset, "grant": grant})
        job = f"{tag}.job"
        await c.submit(consumer, "jobs.Submit", {"id": job, "type": "aggregation", "inputs": inputs,
                                                 "max_price": 5_000})
        for i, (_, node) in enumerate(providers):
            await c.submit(node, "jobs.Attest", {"job": job, "result_hash": RESULT, "records_used": 100 * (i + 1),
                                                 "input_commitments": {f"{tag}.credit-{i}": COMMIT}})
        await c.submit(cn, "jobs.Attest", {"job": job, "result_hash": RESULT, "records_used": 0,
                                           "input_commitments": {}})
        return {"job": await c.query(f"/jobs/{job}"), "consumer": consumer.account,
                "providers": [p.account for p, _ in providers]}


def test_three_provider_job_settles_and_statements_add_up(chain, billing):
    proc, env = billing
    out = asyncio.run(three_provider_job(chain, f"b{int(time.time()) % 100000}"))
    assert out["job"]["status"] == "completed"
    # charges: 300*3 + 200*4... per provider i: (3+i) * 100*(i+1) = 300, 800, 1500 -> 2600 <= 5000
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        recon = http.get("/v1/reconcile").json()
        assert recon == {"equal": True, "differences": []}
        parties = [out["consumer"], *out["providers"], "association"]
        statements = {m: http.get(f"/v1/statements/{m}", params={"since": 0}).json() for m in parties}
        moved = {m: s["closing_balance"] - s["opening_balance"] for m, s in statements.items()}
        consumer = statements[out["consumer"]]
        assert consumer["totals_by_kind"]["deposit"] == 10_000
        assert consumer["totals_by_kind"]["escrow_hold"] == -5_000
        # the consumer paid 2600 (less its own compute fee); providers and the association got it all
        # (the association's entries of this job only: earlier modules' jobs on the session's chain
        # pay the association too)
        job = out["job"]["id"]
        paid_out = sum(moved[m] for m in out["providers"]) + sum(
            e["amount"] for e in statements["association"]["entries"] if e["job"] == job)
        assert 10_000 - moved[out["consumer"]] == paid_out
        assert sum(statements[p]["totals_by_kind"]["job_payout"] for p in out["providers"]) > 0
        invoice = http.get(f"/v1/invoices/{out['consumer']}", params={"since": 0}).json()
        assert sorted(line["charge"] for line in invoice["lines"]) == [300, 800, 1500]
        csv = http.get(f"/v1/statements/{out['consumer']}", params={"since": 0, "format": "csv"})
        assert csv.headers["content-type"].startswith("text/csv") and "escrow_hold" in csv.text
        quote = http.get("/v1/quote", params={"asset": [f"{out['providers'][0].split('-p')[0]}.credit-2"],
                                              "records": 10}).json()
        assert quote["total"] == 50
    cli = subprocess.run([sys.executable, "-m", "services.billing", "reconcile"], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    assert cli.returncode == 0 and "equals the chain" in cli.stdout
