"""rdx_client and the `rdx` member commands against the real gateway, chain and billing: nonce
recovery after refusals (the issue's bar), the gateway's own rate limit waited out by its
Retry-After, typed answers and paging, wait helpers that raise, and the CLI's --json parsed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from test_gateway import ADMIN_TOKEN, start_gateway

import rdx_client
from rdx.components import ServiceProcess, free_port
from rdx.sdk import key_of
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata

COMMIT = "ab" * 32


class World:
    pass


@pytest.fixture(scope="module")
def w(chain, tmp_path_factory):
    root = tmp_path_factory.mktemp("sdk")
    w = World()
    w.chain, w.root, w.tag = chain, root, f"s{int(time.time()) % 100000}"
    w.gateway_key = Identity.generate("association.node")
    w.gateway_key.save(root / "association.node.json")
    w.bank, w.telco, w.busy = (Identity.generate(f"{n}-{w.tag}") for n in ("bank", "telco", "busy"))
    w.asset = f"{w.telco.account}.l3"

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            a = chain.association
            await c.submit(a, "members.SetNode", {"node": {"public_key": w.gateway_key.public_key,
                                                           "endpoint": "127.0.0.1:8000"}})
            for who, roles in ((w.bank, ["consumer"]), (w.telco, ["provider"]), (w.busy, ["consumer"])):
                node = Identity.generate(f"{who.account}.node")
                await c.submit(a, "members.Register", {"id": who.account, "name": who.account, "roles": roles,
                                                       "public_key": who.public_key,
                                                       "node": {"public_key": node.public_key, "endpoint": "127.0.0.1:1"}})
            await c.submit(a, "bank.Deposit", {"to": w.bank.account, "amount": 10_000, "reference": f"{w.tag}-wire"})

    asyncio.run(setup())
    for who in (w.bank, w.telco):
        who.save(root / f"{who.account}.json")
    env = {"RDX_KAFKA_BOOTSTRAP": chain.kafka, "RDX_COMETBFT_RPC": chain.rpc_url, "RDX_CHAIN_ID": chain.chain_id,
           "RDX_STATE_ROOT": str(root / "billing")}
    w.billing = ServiceProcess("billing", free_port(), env, root / "logs")
    w.catalog = ServiceProcess("catalog", free_port(), {**env, "RDX_STATE_ROOT": str(root / "catalog"),
                                                        "RDX_CACHE_REFRESH_S": "0.2"}, root / "logs")
    started = []
    try:
        for proc in (w.billing, w.catalog):
            started.append(proc)
            proc.start()
        w.proc = start_gateway(chain, root, RDX_KEY_FILE=str(root / "association.node.json"), RDX_RATE_PER_S="4",
                               RDX_RATE_BURST="8", RDX_WEBHOOK_ALLOW_PRIVATE="true", RDX_BILLING_URL=w.billing.url,
                               RDX_CATALOG_URL=w.catalog.url)
        started.append(w.proc)
        w.url = w.proc.url
        yield w
    finally:
        for proc in reversed(started):
            proc.stop()


def member(w, who: Identity, **options) -> rdx_client.Client:
    return rdx_client.Client(w.url, key=key_of(who), chain_id=w.chain.chain_id, **options)


def rdx(w, who: Identity | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RDX_GATEWAY": w.url, "RDX_CHAIN_ID": w.chain.chain_id, "COLUMNS": "200"}
    env.pop("RDX_API_KEY", None)
    env.pop("RDX_KEY_FILE", None)
    if who is not None:
        env["RDX_KEY_FILE"] = str(w.root / f"{who.account}.json")
    else:
        env["RDX_API_KEY"] = ADMIN_TOKEN
    return subprocess.run([sys.executable, "-m", "rdx", *args], capture_output=True, text=True, env=env, timeout=120)


def listed(w) -> None:
    if getattr(w, "listed", False):
        return
    with member(w, w.telco) as telco:
        telco.publish_listing(w.asset, level="L3", operations=["psi", "raw_download"], commitment=COMMIT,
                              price={"model": "fixed", "amount": 10}, metadata=example_metadata(f"Data {w.tag}"))
    w.listed = True


def test_after_a_refused_tx_the_next_client_tx_succeeds(w):
    listed(w)
    with member(w, w.bank) as bank:
        first = bank.request_access(f"{w.tag}.n1", w.asset, ["psi"], "nonce recovery")  # the nonce is now cached
        assert first.height > 0 and [e["type"] for e in first.events] == ["AccessRequested"]
        with pytest.raises(rdx_client.Forbidden) as by_policy:  # the gateway's policy: never reaches the chain
            bank.request_access(f"{w.tag}.n2", w.asset, ["raw_download"], "export")
        assert by_policy.value.status == 403
        assert bank.request_access(f"{w.tag}.n3", w.asset, ["psi"], "after a 403").height > 0
        with pytest.raises(rdx_client.ChainRefused) as by_chain:  # CheckTx: the id is taken
            bank.request_access(f"{w.tag}.n3", w.asset, ["psi"], "the same id again")
        assert by_chain.value.type.startswith("urn:rdx:problem:chain:") and by_chain.value.code not in (None, 7)
        assert bank.request_access(f"{w.tag}.n4", w.asset, ["psi"], "after a chain refusal").height > 0

    async def the_async_client():
        async with rdx_client.AsyncClient(w.url, key=key_of(w.bank), chain_id=w.chain.chain_id) as bank:
            with pytest.raises(rdx_client.ChainRefused):
                await bank.request_access(f"{w.tag}.n4", w.asset, ["psi"], "taken")
            return await bank.request_access(f"{w.tag}.n5", w.asset, ["psi"], "async, after a refusal")

    assert asyncio.run(the_async_client()).height > 0


def test_the_gateways_rate_limit_is_waited_out_by_its_retry_after(w):
    statuses: list[int] = []
    http = httpx.Client(timeout=30, event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    with member(w, w.busy, http=http) as busy:
        started = time.monotonic()
        for _ in range(24):  # burst 8, then 4/s: at least 4 s of waiting, every call answered
            assert busy.account(w.busy.account).id == w.busy.account
        took = time.monotonic() - started
    assert statuses.count(200) == 24 and 429 in statuses and set(statuses) == {200, 429}, statuses
    assert took >= 3.0, took
    with member(w, w.busy, retry=rdx_client.Retry(attempts=1)) as impatient, pytest.raises(rdx_client.RateLimited) as limited:
        for _ in range(20):
            impatient.account(w.busy.account)
    assert limited.value.retry_after and limited.value.retry_after >= 1
    assert limited.value.type == "urn:rdx:problem:too-many-requests"


def test_typed_answers_paging_tx_status_and_waits_that_raise(w):
    listed(w)
    with member(w, w.bank) as bank, member(w, w.telco) as telco:
        asked = bank.request_access(f"{w.tag}.t1", w.asset, ["psi"], "typed", max_runs=3)
        bank.request_access(f"{w.tag}.t2", w.asset, ["psi"], "typed")
        status = bank.tx_status(asked.tx_hash)
        assert status.ok and status.height == asked.height
        assert bank.wait_for_tx(asked.tx_hash, timeout=10).height == asked.height
        with pytest.raises(rdx_client.NotFound):
            telco.tx_status(asked.tx_hash)  # another member's tx is not there for telco
        with pytest.raises(rdx_client.WaitTimeout):
            bank.wait_for_tx("EF" * 32, timeout=1.0)

        telco.approve(f"{w.tag}.t1")
        assert bank.wait_for_grant(f"{w.tag}.t1", timeout=10).status == "granted"
        page = telco.access_requests(limit=1)
        assert len(page.items) == 1 and isinstance(page.items[0], rdx_client.models.Grant) and page.next
        following = telco.access_requests(after=page.next, limit=1)
        assert following.items[0].id > page.items[0].id

        quote = bank.quote([w.asset])
        assert quote.max_price >= 10 and quote.lines[0].asset == w.asset
        job = f"{w.tag}.job1"
        bank.submit_job(job, "psi", [{"asset": w.asset, "grant": f"{w.tag}.t1"}], quote.max_price,
                        {"dataset": "customers", "key": "phone"}, timeout_s=600)
        found = bank.jobs(status="running", role="consumer")
        assert job in [j.id for j in found.items] and all(isinstance(j, rdx_client.models.Job) for j in found.items)
        assert telco.job(job).participants == sorted([w.bank.account, w.telco.account])
        started = time.monotonic()
        with pytest.raises(rdx_client.WaitTimeout) as late:  # no compute node runs it: it stays running
            bank.wait_for_job(job, timeout=1.5)
        assert late.value.last.status == "running" and time.monotonic() - started < 10

        deadline = time.monotonic() + 30  # billing's ledger trails the chain by the relay
        while (st := bank.statement(w.bank.account, since=0)).totals_by_kind.get("deposit") != 10_000:
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
        assert bank.balance(w.bank.account).balance == st.closing_balance


def test_the_cli_covers_member_operations_with_json_for_scripts(w, tmp_path):
    listed(w)
    grant = f"{w.tag}.cli"
    asked = rdx(w, w.bank, "access", "request", w.asset, "--id", grant, "--op", "psi", "--purpose", "cli", "--json")
    assert asked.returncode == 0, asked.stderr
    done = json.loads(asked.stdout)
    assert done["height"] > 0 and len(done["tx_hash"]) == 64

    status = rdx(w, w.bank, "tx", "status", done["tx_hash"], "--json")
    assert json.loads(status.stdout) == {"tx_hash": done["tx_hash"], "status": "committed", "height": done["height"],
                                         "code": 0, "log": json.loads(status.stdout)["log"]}
    table = rdx(w, w.bank, "tx", "status", done["tx_hash"])
    assert table.returncode == 0 and "committed" in table.stdout and not table.stdout.lstrip().startswith("{")

    rejected = rdx(w, w.telco, "access", "reject", grant, "--reason", "not for cli tests", "--json")
    assert rejected.returncode == 0, rejected.stderr
    mine = json.loads(rdx(w, w.bank, "access", "list", "--json").stdout)
    assert {g["id"]: g["status"] for g in mine["items"]}[grant] == "rejected"

    again = rdx(w, w.telco, "access", "approve", grant, "--json")  # a rejected request cannot be approved
    assert again.returncode == 1 and again.stdout == ""
    assert "Rejected by the chain" in again.stderr and "urn:rdx:problem:chain:" in again.stderr

    jobs = json.loads(rdx(w, w.bank, "jobs", "list", "--json").stdout)
    assert isinstance(jobs["items"], list) and "next" in jobs

    metadata = tmp_path / "md.json"
    metadata.write_text(json.dumps(example_metadata(f"CLI data {w.tag}")))
    published = rdx(w, w.telco, "listings", "publish", f"{w.telco.account}.cli", "--level", "L2", "--op", "psi",
                    "--metadata", str(metadata), "--price", "7", "--commitment", "cd" * 32, "--json")
    assert published.returncode == 0 and json.loads(published.stdout)["height"] > 0, published.stderr
    no_commitment = rdx(w, w.telco, "listings", "publish", f"{w.telco.account}.x", "--level", "L2", "--op", "psi",
                        "--metadata", str(metadata), "--price", "7")
    assert no_commitment.returncode == 2 and "commitment" in no_commitment.stderr

    hook = rdx(w, w.telco, "webhooks", "register", "https://127.0.0.1:9/hook", "--event", "access", "--json")
    assert hook.returncode == 0, hook.stderr
    made = json.loads(hook.stdout)
    assert made["secret"].startswith("whsec_")
    listed_hooks = json.loads(rdx(w, w.telco, "webhooks", "list", "--json").stdout)
    assert [h["id"] for h in listed_hooks["items"]] == [made["id"]] and "secret" not in listed_hooks["items"][0]
    assert json.loads(rdx(w, w.telco, "webhooks", "replay", made["id"], "--since", "0", "--json").stdout)["replayed"] >= 0
    assert rdx(w, w.telco, "webhooks", "delete", made["id"], "--json").returncode == 0

    quote = json.loads(rdx(w, w.bank, "billing", "quote", w.asset, "--json").stdout)
    assert quote["max_price"] >= 10
    statement = json.loads(rdx(w, w.bank, "billing", "statement", w.bank.account, "--since", "0", "--json").stdout)
    assert statement["member"] == w.bank.account and isinstance(statement["entries"], list)
    refused = rdx(w, w.bank, "billing", "statement", w.telco.account, "--json")  # another member's books
    assert refused.returncode == 1 and "403" in refused.stderr

    key = json.loads(rdx(w, None, "keys", "create", w.bank.account, "analyst", "--json").stdout)
    assert key["token"] and key["role"] == "analyst"


def test_search_and_a_listing_from_the_real_catalog_are_typed(w):
    listed(w)
    with member(w, w.bank) as bank:
        deadline = time.monotonic() + 30  # the catalog indexes the chain's events as the relay publishes them
        while not (found := bank.search(w.tag)).items:
            assert time.monotonic() < deadline, found
            time.sleep(0.5)
        assert w.asset in [i.id for i in found.items] and found.total >= 1
        detail = bank.listing(w.asset)
        assert (detail.commitment, detail.level, detail.provider.id) == (COMMIT, "L3", w.telco.account)
        with pytest.raises(rdx_client.NotFound):
            bank.listing(f"{w.tag}.nothing")
    cli = rdx(w, w.bank, "search", w.tag, "--json")
    assert cli.returncode == 0, cli.stderr
    assert w.asset in [i["id"] for i in json.loads(cli.stdout)["items"]]
    table = rdx(w, w.bank, "listings", "show", w.asset)
    assert table.returncode == 0 and COMMIT in table.stdout


def test_every_field_the_client_requires_is_one_the_gateways_openapi_requires(w):
    """The client's models against the running gateway's own OpenAPI document: a field the client
    insists on that the gateway does not promise would make real answers fail to parse."""
    doc = httpx.get(f"{w.url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    pairs = {"TxResult": "TxResult", "TxStatus": "TxStatus", "Account": "Account", "Grant": "Grant",
             "Job": "JobRecord", "ApiKey": "KeyInfo", "NewApiKey": "NewKeyResult", "Webhook": "WebhookInfo",
             "NewWebhook": "NewWebhookResult", "Delivery": "DeliveryInfo", "Replayed": "Replayed"}
    for ours, theirs in pairs.items():
        model = getattr(rdx_client.models, ours)
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        promised = set(schemas[theirs].get("required", []))
        assert required <= promised, (ours, required - promised)
        assert set(model.model_fields) - {"events", "attestations", "result_hash", "ended_reason", "ended_height"} \
            <= set(schemas[theirs]["properties"]), (ours, set(model.model_fields) - set(schemas[theirs]["properties"]))
