"""The gateway's API surface on the real chain, catalog and billing: the caller's own jobs, paged
and filtered; problem types per chain code; the catalog's and billing's errors passed through;
the OpenAPI document's security schemes and error responses."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from test_gateway import start_gateway

from rdx.components import ServiceProcess, free_port
from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import Tx
from services.gateway.views import CODE_NAMES, CODE_STATUS


class World:
    pass


@pytest.fixture(scope="module")
def w(chain, tmp_path_factory):
    root = tmp_path_factory.mktemp("surface")
    w = World()
    w.chain, tag = chain, f"sf{int(time.time()) % 100000}"
    w.asset = f"{tag}.l3"
    w.bank, w.telco, w.other = (Identity.generate(f"{name}-{tag}") for name in ("bank", "telco", "other"))
    w.jobs = [f"{tag}.j{i}" for i in range(3)]

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((w.bank, ["consumer"]), (w.telco, ["provider"]), (w.other, ["consumer"])):
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key,
                    "node": {"public_key": Identity.generate(f"{who.account}.node").public_key,
                             "endpoint": "127.0.0.1:1"}})
            await c.submit(chain.association, "bank.Deposit", {"to": w.bank.account, "amount": 10_000, "reference": tag})
            await c.submit(w.telco, "assets.List", {
                "id": w.asset, "level": "L3", "operations": ["aggregation"], "commitment": "ab" * 32,
                "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata("Credit lines"),
                "privacy_budget": {"epsilon_milli": 100_000, "period_s": 86_400}})
            await c.submit(w.bank, "access.Request", {"id": f"{tag}.g", "asset": w.asset, "operations": ["aggregation"],
                                                      "purpose": "statistics", "expires_at": 4_000_000_000,
                                                      "max_runs": 10})
            await c.submit(w.telco, "access.Approve", {"id": f"{tag}.g"})
            for job in w.jobs:
                await c.submit(w.bank, "jobs.Submit", {"id": job, "type": "aggregation", "max_price": 10,
                                                       "inputs": [{"asset": w.asset, "grant": f"{tag}.g"}],
                                                       "params": {"columns": ["amount"]}})
            w.grant = f"{tag}.g"

    asyncio.run(setup())
    env = {"RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
           "RDX_STATE_ROOT": str(root / "upstreams")}
    w.upstreams = [ServiceProcess(name, free_port(), env, root / "logs") for name in ("catalog", "billing")]
    for service in w.upstreams:
        service.start()
    w.proc = start_gateway(chain, root, RDX_CATALOG_URL=w.upstreams[0].url, RDX_BILLING_URL=w.upstreams[1].url,
                           RDX_RATE_PER_S="50", RDX_RATE_BURST="100")
    try:
        yield w
    finally:
        w.proc.stop()
        for service in w.upstreams:
            service.stop()


def call(w, who: Identity, method: str, path: str, body: bytes = b"", **params) -> httpx.Response:
    url = str(httpx.URL(w.proc.url + path, params=params))
    headers = httpsig.sign(who, method, url, body)
    if body:
        headers["content-type"] = "application/json"
    return httpx.request(method, url, content=body, headers=headers, timeout=30)


def pages(w, who: Identity, path: str, **params) -> list[list[dict]]:
    found = []
    while True:
        resp = call(w, who, "GET", path, **params)
        assert resp.status_code == 200, resp.text
        found.append(resp.json())
        if "next" not in resp.links:
            return found
        params = dict(httpx.URL(resp.links["next"]["url"]).params)


def test_my_jobs_paged_and_filtered(w):
    assert [[j["id"] for j in page] for page in pages(w, w.bank, "/v1/jobs", limit=2)] == [w.jobs[:2], w.jobs[2:]]
    ids = lambda who, **f: [j["id"] for page in pages(w, who, "/v1/jobs", **f) for j in page]  # noqa: E731
    status = call(w, w.bank, "GET", f"/v1/jobs/{w.jobs[0]}").json()["status"]
    assert ids(w.bank, role="consumer") == w.jobs and ids(w.bank, role="provider") == []
    assert ids(w.telco, role="provider") == w.jobs and ids(w.telco, role="consumer") == []
    assert ids(w.bank, type="aggregation", status=status) == w.jobs and ids(w.bank, type="psi") == []
    assert ids(w.other) == []  # nobody else's jobs
    assert call(w, w.bank, "GET", "/v1/jobs", role="owner").status_code == 422
    assert call(w, w.bank, "GET", "/v1/jobs", limit="0").status_code == 422


def test_every_list_pages(w):
    grants = pages(w, w.telco, "/v1/access-requests", limit=1)
    assert [g["id"] for page in grants for g in page] == [w.grant] and len(grants) == 1
    assert pages(w, w.other, "/v1/access-requests") == [[]]


def test_a_refusal_by_the_chain_has_its_codes_type(w):
    account = call(w, w.bank, "GET", f"/v1/accounts/{w.bank.account}").json()
    tx = Tx.build(w.bank, w.chain.chain_id, "jobs.Submit", account["nonce"] + 1, {
        "id": w.jobs[0], "type": "aggregation", "max_price": 10, "inputs": [{"asset": w.asset, "grant": w.grant}],
        "params": {"columns": ["amount"]}})  # the id is taken
    resp = call(w, w.bank, "POST", "/v1/jobs", json.dumps({"tx": json.loads(tx.encode())}).encode())
    problem = resp.json()
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert problem["title"] == "Rejected by the chain" and isinstance(problem["code"], int)
    assert problem["type"] == f"urn:rdx:problem:chain:{CODE_NAMES[problem['code']]}"
    assert resp.status_code == CODE_STATUS.get(problem["code"], 400)


def test_the_gateways_own_problems_have_stable_types(w):
    missing = call(w, w.bank, "GET", "/v1/jobs/no-such-job")
    assert missing.status_code == 404 and missing.json()["type"] == "urn:rdx:problem:not-found"
    invalid = call(w, w.bank, "GET", "/v1/jobs", limit="x")
    assert invalid.json()["type"] == "urn:rdx:problem:invalid-request" and invalid.json()["errors"]
    forbidden = call(w, w.bank, "GET", f"/v1/billing/statements/{w.telco.account}")
    assert forbidden.status_code == 403 and forbidden.json()["type"] == "urn:rdx:problem:forbidden"


def test_catalog_and_billing_errors_reach_the_caller(w):
    too_many = call(w, w.bank, "GET", "/v1/listings", level=[f"L{i}" for i in range(25)])
    problem = too_many.json()
    assert too_many.status_code == 400 and problem["type"] == "urn:rdx:problem:catalog"
    assert problem["errors"][0]["field"] == "level" and "at most 20 values" in problem["errors"][0]["message"]
    assert "level" in problem["detail"] and problem["title"] == "Rejected by the catalog"

    unknown = call(w, w.bank, "GET", "/v1/billing/quote", asset="no.such.asset")
    problem = unknown.json()
    assert unknown.status_code == 404 and problem["type"] == "urn:rdx:problem:billing"
    assert problem["title"] == "unknown asset"


def test_openapi_declares_security_and_problem_responses(w):
    doc = httpx.get(f"{w.proc.url}/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "httpSignature"}
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in doc["paths"].items():
        if path.startswith("/v1/"):
            for op in operations.values():
                assert op["security"] == [{"apiKey": []}, {"httpSignature": []}], path
                assert op["responses"]["403"]["content"]["application/problem+json"]["schema"] == problem, path
    listed = doc["paths"]["/v1/jobs"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["items"] == {"$ref": "#/components/schemas/JobRecord"}
