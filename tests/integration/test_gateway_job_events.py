"""The gateway's job stream (GET /v1/jobs/{id}/events, server-sent events) on the real chain: the
record now, every change, the end; only to a party of the job; a bounded number open per member."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
from test_gateway import start_gateway

from services.common import httpsig
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.gateway.views import JOB_STREAMS_PER_MEMBER


class World:
    pass


@pytest.fixture(scope="module")
def w(chain, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobevents")
    w, tag = World(), f"je{int(time.time()) % 100000}"
    w.chain, w.asset, w.grant = chain, f"{tag}.l3", f"{tag}.g"
    w.bank, w.telco, w.other = (Identity.generate(f"{name}-{tag}") for name in ("bank", "telco", "other"))
    w.jobs = [f"{tag}.j{i}" for i in range(2)]
    w.node_keys = {who.account: Identity.generate(f"{who.account}.node").public_key for who in (w.bank, w.telco, w.other)}

    async def setup():
        async with ChainClient(chain.rpc_url, chain.chain_id) as c:
            for who, roles in ((w.bank, ["consumer"]), (w.telco, ["provider"]), (w.other, ["consumer"])):
                # nodes that never answer: the jobs stay running until they are aborted
                await c.submit(chain.association, "members.Register", {
                    "id": who.account, "name": who.account, "roles": roles, "public_key": who.public_key,
                    "node": {"public_key": w.node_keys[who.account], "endpoint": "127.0.0.1:1"}})
            await c.submit(chain.association, "bank.Deposit", {"to": w.bank.account, "amount": 10_000, "reference": tag})
            await c.submit(w.telco, "assets.List", {
                "id": w.asset, "level": "L3", "operations": ["psi"], "commitment": "ab" * 32,
                "price": {"model": "fixed", "amount": 10}, "metadata": example_metadata("Subscribers")})
            await c.submit(w.bank, "access.Request", {"id": w.grant, "asset": w.asset, "operations": ["psi"],
                                                      "purpose": "marketing", "expires_at": 4_000_000_000,
                                                      "max_runs": 10})
            await c.submit(w.telco, "access.Approve", {"id": w.grant})
            for job in w.jobs:
                await c.submit(w.bank, "jobs.Submit", {"id": job, "type": "psi", "max_price": 10,
                                                       "inputs": [{"asset": w.asset, "grant": w.grant}],
                                                       "params": {"dataset": "customers", "key": "phone"}})

    asyncio.run(setup())
    w.proc = start_gateway(chain, root)
    try:
        yield w
    finally:
        w.proc.stop()


def signed(w, who: Identity, path: str) -> tuple[str, dict]:
    url = w.proc.url + path
    return url, httpsig.sign(who, "GET", url, b"")


def events(response: httpx.Response):
    """(event, data) pairs of a text/event-stream, as a browser's EventSource reads them."""
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def abort(w, job: str) -> None:
    async def send():
        async with ChainClient(w.chain.rpc_url, w.chain.chain_id) as c:
            await c.submit(w.chain.association, "jobs.Abort", {"job": job, "reason": "kill switch (test)"})
    asyncio.run(send())


def test_the_stream_sends_the_record_then_its_end(w):
    job = w.jobs[0]
    url, headers = signed(w, w.bank, f"/v1/jobs/{job}/events")
    seen = []
    started = time.monotonic()
    with httpx.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for name, record in events(response):
            seen.append(record["status"])
            assert name == "job" and record["id"] == job
            if len(seen) == 1:
                threading.Thread(target=abort, args=(w, job)).start()
    # the stream ended by itself once the job had: running, then aborted, and nothing after
    assert seen == ["running", "aborted"], seen
    assert time.monotonic() - started < 30


def test_only_a_party_of_the_job_may_follow_it(w):
    for who, path in ((w.other, f"/v1/jobs/{w.jobs[1]}/events"), (w.bank, "/v1/jobs/no-such-job/events"),
                      (w.bank, "/v1/jobs/..%2F..%2Fkeys/events")):
        url, headers = signed(w, who, path)
        answer = httpx.get(url, headers=headers, timeout=30)
        assert answer.status_code in (404, 422) and answer.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(w.proc.url + f"/v1/jobs/{w.jobs[1]}/events", timeout=30).status_code == 401
    # the provider is a party too: it reads the record (and the stream stays open while the job runs)
    url, headers = signed(w, w.telco, f"/v1/jobs/{w.jobs[1]}/events")
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        name, record = next(events(response))
        assert response.status_code == 200 and record["status"] == "running"


def test_the_members_list_pages_and_says_only_what_the_chain_makes_public(w):
    url, headers = signed(w, w.other, "/v1/members?limit=1")
    first = httpx.get(url, headers=headers, timeout=30)
    assert first.status_code == 200 and len(first.json()) == 1 and "next" in first.links
    url, headers = signed(w, w.other, "/v1/members")
    everyone = {m["id"]: m for m in httpx.get(url, headers=headers, timeout=30).json()}
    assert everyone[w.bank.account] == {
        "id": w.bank.account, "name": w.bank.account, "roles": ["consumer"], "status": "active",
        "public_key": w.bank.public_key, "node": {"account": f"{w.bank.account}.node", "endpoint": "127.0.0.1:1",
                                                  "public_key": w.node_keys[w.bank.account]}}
    url, headers = signed(w, w.other, "/v1/members?limit=0")
    assert httpx.get(url, headers=headers, timeout=30).status_code == 422


def test_a_member_may_hold_only_so_many_streams_open(w):
    job = w.jobs[1]  # still running: its streams stay open
    with httpx.Client(timeout=30) as http:
        opened = []  # each response with its event iterator (dropping the iterator would close the stream)
        try:
            for _ in range(JOB_STREAMS_PER_MEMBER):
                url, headers = signed(w, w.bank, f"/v1/jobs/{job}/events")
                response = http.send(http.build_request("GET", url, headers=headers), stream=True)
                assert response.status_code == 200
                reader = events(response)
                assert next(reader)[1]["status"] == "running"  # open, and counted
                opened.append((response, reader))
            url, headers = signed(w, w.bank, f"/v1/jobs/{job}/events")
            refused = http.get(url, headers=headers)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
            # the cap is the member's: the provider of the same job still gets its stream
            url, headers = signed(w, w.telco, f"/v1/jobs/{job}/events")
            with http.stream("GET", url, headers=headers) as provider:
                assert provider.status_code == 200
        finally:
            for response, _ in opened:
                response.close()
        # closed streams give their places back (the gateway sees a disconnect within a poll)
        deadline = time.monotonic() + 15
        while True:
            url, headers = signed(w, w.bank, f"/v1/jobs/{job}/events")
            with http.stream("GET", url, headers=headers) as again:
                if again.status_code == 200 or time.monotonic() > deadline:
                    break
            time.sleep(0.5)
        assert again.status_code == 200
    assert w.proc.process.alive()
