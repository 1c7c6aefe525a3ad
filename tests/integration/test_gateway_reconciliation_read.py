"""The gateway's billing reconciliation read (GET /v1/billing/reconciliation) on the real chain, broker
and billing service: billing reconciles its read model against the chain on the call; the association's
staff read the answer, a member's people get 403; a read model changed behind billing's back shows as
the differences billing names."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
from test_gateway import start_gateway

from rdx.components import ServiceProcess, free_port
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity


def test_the_association_reads_billing_s_reconciliation(chain, tmp_path):
    bank = Identity.generate(f"bank-r{int(time.time()) % 100000}")

    admitted = [("members.Register", {"id": bank.account, "name": bank.account, "roles": ["consumer"],
                                      "public_key": bank.public_key}),
                ("bank.Deposit", {"to": bank.account, "amount": 1_000, "reference": f"{bank.account}-wire"})]

    async def admit():  # a member with 1,000 credits issued by the association
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for kind, payload in admitted:
                await c.submit(chain.association, kind, payload)

    asyncio.run(admit())
    env = {"RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
           "RDX_STATE_ROOT": str(tmp_path / "billing-state")}
    billing = ServiceProcess("billing", free_port(), env, tmp_path / "logs")
    billing.start()
    gateway = start_gateway(chain, tmp_path, RDX_BILLING_URL=billing.url)
    url = f"{gateway.url}/v1/billing/reconciliation"

    def read(who: Identity) -> httpx.Response:
        return httpx.get(url, headers=httpsig.sign(who, "GET", url, b""), timeout=60)

    try:
        deadline = time.monotonic() + 90  # billing's read model catches up with the chain's history
        while True:
            before = time.time()
            answer = read(chain.association)
            assert answer.status_code == 200, answer.text
            found = answer.json()
            if found["equal"] or time.monotonic() > deadline:
                break
        assert found["equal"] is True and found["differences"] == [], found
        assert before <= found["checked_at"] <= time.time()  # reconciled on this call
        assert read(bank).status_code == 403  # a member's admin: not its to read

        # A credit the chain never issued, written into billing's read model while billing is stopped.
        billing.stop()
        ledger = sqlite3.connect(Path(env["RDX_STATE_ROOT"]) / "billing" / "ledger.sqlite")
        with ledger:
            ledger.execute("INSERT INTO ledger (event_id, line, height, time, member, amount, kind) "
                           "VALUES ('tampered', 0, 0, 0, ?, '7', 'deposit')", (bank.account,))
        ledger.close()
        billing.start()
        answer = read(chain.association)
        assert answer.status_code == 200, answer.text
        found = answer.json()
        assert found["equal"] is False
        assert f"balance of {bank.account}: chain 1000, billing 1007" in found["differences"]
        assert any(d.startswith("credit supply: chain ") for d in found["differences"])
    finally:
        gateway.stop()
        billing.stop()
