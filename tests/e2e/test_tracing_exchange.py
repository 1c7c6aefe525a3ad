"""One listing through the gateway is one trace, read back from a real OpenTelemetry Collector:
the gateway's request span and its broadcast of the tx, the consensus relay's publish of the tx's
chain event (its context carried in the tx), and the billing and gateway consumers' handling of
that event (continued from the record's traceparent header). A listing, because billing acts on
`AssetListed` (its price); it skips, untraced, the events its ledger does not act on, such as an
access request's (services/billing/events.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from contextlib import ExitStack

import httpx
import pytest

from conftest import running_chain
from rdx.components import ServiceProcess, free_port
from rdx.otel_toolchain import Collector
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.events import CHAIN_EVENTS
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Tx

pytestmark = pytest.mark.built_tools  # the OpenTelemetry Collector

ADMIN_TOKEN = "rdx_bootstrap.tracing-admin-token-not-a-secret"


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s")


@pytest.mark.timeout(300)
def test_one_listing_is_one_trace_from_gateway_through_chain_and_kafka_to_consumers(
        toolchain, kafka, tmp_path, monkeypatch):
    with ExitStack() as stack:  # unwound in reverse: the services, then the chain, then the collector
        collector = Collector(tmp_path / "otelcol")
        stack.callback(collector.stop)
        collector.start()
        # Every process started below inherits these (rdx.components.Process passes os.environ on).
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        chain = stack.enter_context(running_chain(toolchain, kafka, tmp_path / "chain"))
        tag = f"t{int(time.time()) % 100000}"
        bank, telco = Identity.generate(f"bank-{tag}"), Identity.generate(f"telco-{tag}")
        asset = f"{tag}.data"

        async def setup():
            async with ChainClient(chain.rpc_url, chain.chain_id) as c:
                for who, roles in ((bank, ["consumer"]), (telco, ["provider"])):
                    await c.submit(chain.association, "members.Register", {
                        "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key})
                return await c.next_nonce(telco.account)

        nonce = asyncio.run(setup())
        base = {"RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url,
                "RDX_CHAIN_ID": chain.chain_id}
        billing = ServiceProcess("billing", free_port(), {**base, "RDX_STATE_ROOT": str(tmp_path / "billing")},
                                 tmp_path / "logs")
        gateway = ServiceProcess("gateway", free_port(), {
            **base, "RDX_STATE_ROOT": str(tmp_path / "gateway"), "RDX_BILLING_URL": billing.url,
            "RDX_BOOTSTRAP_KEY_SHA256": hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}, tmp_path / "logs")
        for proc in (billing, gateway):
            stack.callback(proc.stop)
            proc.start()

        title = f"Data for tracing {tag}"
        tx = Tx.build(telco, chain.chain_id, "assets.List", nonce, {
            "id": asset, "level": "L3", "operations": ["psi"], "commitment": "ab" * 32,
            "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata(title)})
        url = f"{gateway.url}/v1/tx"
        body = json.dumps({"tx": tx.model_dump()}).encode()
        resp = httpx.post(url, content=body, timeout=30, headers={
            "content-type": "application/json", **httpsig.sign(telco, "POST", url, body)})
        assert resp.status_code == 200, resp.text
        answered = resp.json()
        # The gateway traced the tx, so the chain holds it with its trace: the hash it reports is
        # that of the bytes it broadcast, not of the bytes the member signed.
        assert answered["tx_hash"] != tx.hash
        trace_id = resp.headers["traceparent"].split("-")[1]

        def whole_trace():
            spans = [s for s in collector.spans() if s["traceId"] == trace_id]
            names = {(s["service"], s["name"]) for s in spans}
            wanted = {("rdx-gateway", "POST /v1/tx"), ("rdx-gateway", "chain broadcast"),
                      ("rdx-consensus", f"{CHAIN_EVENTS} publish"),
                      ("rdx-billing", f"{CHAIN_EVENTS} process"), ("rdx-gateway", f"{CHAIN_EVENTS} process")}
            return spans if wanted <= names else None

        spans = wait_for(whole_trace, 120, f"the trace {trace_id} with every span")
        by_id = {s["spanId"]: s for s in spans}
        broadcast = next(s for s in spans if s["name"] == "chain broadcast")
        request = by_id[broadcast["parentSpanId"]]
        assert request["name"] == "POST /v1/tx"
        publish = [s for s in spans if s["name"] == f"{CHAIN_EVENTS} publish"]
        assert publish and all(s["parentSpanId"] == broadcast["spanId"] for s in publish)
        attrs = {a["key"]: a["value"] for a in broadcast["attributes"]}
        assert attrs["rdx.tx.hash"]["stringValue"] == answered["tx_hash"]
        consumed = [s for s in spans if s["name"] == f"{CHAIN_EVENTS} process"]
        assert {s["parentSpanId"] for s in consumed} <= {s["spanId"] for s in publish}
        assert {s["service"] for s in consumed} == {"rdx-billing", "rdx-gateway"}
        # A read the gateway answers from billing: billing's request span is a child of the gateway's.
        url = f"{gateway.url}/v1/billing/prices/{asset}"
        resp = httpx.get(url, timeout=30, headers=httpsig.sign(bank, "GET", url, b""))
        assert resp.status_code == 200, resp.text
        read_trace = resp.headers["traceparent"].split("-")[1]

        def read_spans():
            found = {(s["service"], s["name"]): s for s in collector.spans() if s["traceId"] == read_trace}
            return found if len(found) >= 2 else None

        read = wait_for(read_spans, 60, f"the trace {read_trace} of the billing read")
        outer = read[("rdx-gateway", "GET /v1/billing/prices/{asset_id}")]
        assert read[("rdx-billing", "GET /v1/prices/{asset}")]["parentSpanId"] == outer["spanId"]
        # No span carries the tx's payload, a signature or a key.
        text = json.dumps(spans)
        for secret in (tx.sig, telco.public_key, title):
            assert secret not in text
