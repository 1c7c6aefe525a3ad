"""The gateway's listing drafts route (POST /v1/drafts/validate), which forwards a provider's member
admin's draft to the real catalog's validation with the caller's member as the signer: every problem
field by field, the canonical payload of a valid draft, an update of another member's listing refused
by the catalog, and no one else may ask. On the real chain, catalog and gateway."""

from __future__ import annotations

import asyncio
import time

import httpx
from test_gateway import start_gateway

from rdx.components import ServiceProcess, free_port
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata

COMMIT = "cd" * 32


def draft(asset: str, **changes) -> dict:
    body = {"id": asset, "level": "L2", "operations": ["psi", "aggregation"], "commitment": COMMIT,
            "price": {"model": "fixed", "amount": 5}, "metadata": example_metadata("Draft 草稿")}
    body.update(changes)
    return body


def test_a_provider_s_admin_has_its_draft_checked_field_by_field(chain, tmp_path):
    tag = f"d{int(time.time()) % 100000}"
    telco, shop, bank = (Identity.generate(f"{n}-{tag}") for n in ("telco", "shop", "bank"))

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((telco, ["provider"]), (shop, ["provider"]), (bank, ["consumer"])):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key})
            await c.submit(shop, "assets.List", draft(f"{tag}.shop"))

    asyncio.run(setup())
    catalog = ServiceProcess("catalog", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
        "RDX_STATE_ROOT": str(tmp_path / "catalog")}, tmp_path / "logs")
    catalog.start()
    gateway = start_gateway(chain, tmp_path, RDX_CATALOG_URL=catalog.url)
    url = f"{gateway.url}/v1/drafts/validate"

    def ask(who: Identity, body: dict) -> httpx.Response:
        raw = httpx.Request("POST", url, json=body).content
        return httpx.post(url, content=raw, headers={"content-type": "application/json",
                                                     **httpsig.sign(who, "POST", url, raw)}, timeout=30)

    try:
        bad = draft(f"{tag}.new", level="L9", commitment="xyz", operations=["psi", "psi"],
                    metadata=example_metadata("", row_count="12", last_updated="1999-01-01"))
        answer = ask(telco, {"listing": bad})
        assert answer.status_code == 200, answer.text
        verdict = answer.json()
        assert verdict["valid"] is False and verdict["payload"] is None
        fields = {p["field"] for p in verdict["problems"]}
        assert {"level", "commitment", "operations", "metadata.title", "metadata.row_count"} <= fields, fields
        assert all(isinstance(p["message"], str) and p["message"] for p in verdict["problems"])

        good = draft(f"{tag}.new")
        verdict = ask(telco, {"listing": good}).json()
        assert verdict["valid"] is True and verdict["problems"] == []
        assert verdict["payload"]["operations"] == ["aggregation", "psi"]  # canonical: sorted, defaults written
        assert verdict["payload"]["min_group_size"] == 1 and verdict["policy_version"] >= 1

        # the signer is the caller's member: another member's listing cannot be updated (once the
        # catalog has read the shop's listing from the chain's events)
        for _ in range(60):
            verdict = ask(telco, {"type": "assets.Update", "listing": draft(f"{tag}.shop")}).json()
            if any("belongs to" in p["message"] for p in verdict["problems"]):
                break
            time.sleep(0.5)
        assert verdict["valid"] is False and {"field": "id", "message": f"{tag}.shop belongs to {shop.account}; only "
                                              "its owner may update it"} in verdict["problems"]
        assert ask(shop, {"type": "assets.Update", "listing": draft(f"{tag}.shop")}).json()["valid"] is True
        assert ask(telco, {"listing": draft(f"{tag}.shop")}).json()["valid"] is False  # its id is taken

        # not a listing at all, or one nested past any listing's depth: a clear refusal, never a 5xx
        deep: object = "x"
        for _ in range(200):
            deep = {"a": deep}
        for junk in ("x" * 1000, [1, 2], None, 7, {"id": deep}):
            answer = ask(telco, {"listing": junk})
            assert answer.status_code < 500, (junk if not isinstance(junk, dict) else "deep", answer.text)
            assert answer.status_code != 200 or answer.json()["valid"] is False

        assert ask(bank, {"listing": good}).status_code == 403  # a consumer's admin lists nothing
        assert ask(chain.association, {"listing": good}).status_code == 403
        assert ask(telco, {"listing": good, "signer": bank.account}).status_code == 422  # no signer of one's choosing
    finally:
        gateway.stop()
        catalog.stop()
