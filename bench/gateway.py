"""`make bench-gateway`: the policy decision's latency (cedarpy, against the same rule in Rego
through regopy), and authorized-search throughput through the whole gateway stack against a bare
FastAPI endpoint that serves the same search from the same catalog, in the same run.

The bare endpoint is a plain proxy to the catalog: the ratio is what the gateway's
authentication, rate limiting, policy, audit trail and metrics cost a search.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import median, metric, percentile, write
from rdx.components import LOOPBACK, free_port, http_ok, wait_until
from rdx.supervisor import Exchange, Ports
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.policy import AssetView, Caller, GrantView, Policy

OPS = ("raw_download", "psi", "aggregation", "he_scoring")
BARE_APP = '''
import httpx, uvicorn
from fastapi import FastAPI, Request
app = FastAPI()
client = httpx.AsyncClient(timeout=10)
@app.get("/v1/listings")
async def search(request: Request):
    r = await client.get(CATALOG + "/v1/listings", params=dict(request.query_params))
    return r.json()
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False)
'''


def decision_cases() -> list[tuple]:
    grants = [GrantView("granted", "bank", OPS, False, 3, ("provider",)),
              GrantView("granted", "bank", OPS, False, 3, ("provider", "association")),
              GrantView("pending", "bank", OPS, False, 3, ()), GrantView("granted", "bank", OPS, True, 3, ("provider",))]
    return list(itertools.product(("analyst", "auditor"), ("L1", "L2", "L3", "L4"), OPS, grants))


def cedar_round(policy: Policy, cases: list[tuple], n: int) -> list[float]:
    """Each decision evaluated by Cedar, as regopy evaluates each: services/common/policy.py
    remembers decisions (and parsed entities), so its caches are emptied before every one (outside
    the time), or from the second round on this would time dictionary lookups."""
    from services.common import policy as policy_module

    times = []
    for role, level, op, grant in itertools.islice(itertools.cycle(cases), n):
        policy_module._decide.cache_clear()
        policy_module._entities.cache_clear()
        t = time.perf_counter()
        policy.decide(Caller("bank", role, ("consumer",)), "run", AssetView("a", level, "telco", OPS),
                      operation=op, grant=grant)
        times.append(time.perf_counter() - t)
    return times


def rego_round(cases: list[tuple], n: int) -> list[float]:
    from regopy import Interpreter

    rego = Interpreter()
    rego.add_module("rdx", (Path(__file__).parent / "policy.rego").read_text())
    bundle = rego.build("data.rdx.allow")
    times = []
    for role, level, op, grant in itertools.islice(itertools.cycle(cases), n):
        t = time.perf_counter()
        rego.set_input_term(json.dumps({
            "principal": {"member": "bank", "role": role, "suspended": False},
            "resource": {"level": level, "status": "listed"}, "operation": op,
            "grant": {"status": grant.status, "consumer": grant.consumer, "operations": list(grant.operations),
                      "expired": grant.expired, "runs_left": grant.runs_left, "approvals": list(grant.approvals)}}))
        rego.query_bundle(bundle)
        times.append(time.perf_counter() - t)
    return times


def policy_metrics(rounds: int, n: int) -> list[dict]:
    policy, cases = Policy(), decision_cases()
    cedar_round(policy, cases, 500)
    rego_round(cases, 200)  # warm-up
    cedar, rego = [], []
    for _ in range(rounds):  # interleaved rounds
        cedar += cedar_round(policy, cases, n)
        rego += rego_round(cases, n)
    c99, r99 = percentile(cedar, 0.99) * 1e3, percentile(rego, 0.99) * 1e3
    return [
        metric("policy_decision_p99_ms", c99, "ms", baseline_name="regopy_decision_p99_ms", baseline_value=r99,
               bar="<= 1 ms (absolute)", passed=c99 <= 1.0),
        metric("policy_decision_p50_ms", median(cedar) * 1e3, "ms", baseline_name="regopy_decision_p50_ms",
               baseline_value=median(rego) * 1e3),
    ]


async def load(url: str, headers: dict, seconds: float, concurrency: int) -> tuple[float, int]:
    """Closed-loop: ``concurrency`` clients for ``seconds``; returns (req/s, non-200 answers)."""
    done, errors = 0, 0
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker(i: int) -> None:
            nonlocal done, errors
            queries = ("subscribers", "district", "mobile", "credit")
            while time.monotonic() < deadline:
                resp = await client.get(url, params={"q": queries[i % len(queries)], "limit": "10"}, headers=headers)
                done += 1
                errors += resp.status_code != 200
        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done / (time.monotonic() - started), errors


async def seed(eps: dict, state: Path, listings: int) -> tuple[str, str]:
    association = Identity.load(state / "keys" / "association.json")
    telco, bank = Identity.generate("telco"), Identity.generate("bank")
    async with ChainClient(eps["cometbft"], "rdx-local") as chain:
        await chain.submit(association, "members.Register", {"id": "telco", "name": "Telco", "roles": ["provider"],
                                                             "public_key": telco.public_key})
        await chain.submit(association, "members.Register", {"id": "bank", "name": "Bank", "roles": ["consumer"],
                                                             "public_key": bank.public_key})
        for i in range(listings):
            await chain.submit(telco, "assets.List", {
                "id": f"telco.set-{i}", "level": ["L1", "L2", "L3"][i % 3], "operations": ["psi", "aggregation"],
                "commitment": f"{i:064x}", "price": {"model": "fixed", "amount": 10 + i},
                "metadata": example_metadata(f"Mobile subscribers set {i}")}, wait=(i == listings - 1))
    admin = (state / "keys" / "admin.token").read_text().strip()
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{eps['gateway']}/v1/keys", json={"member": "bank", "role": "analyst"},
                                 headers={"authorization": f"Bearer {admin}"})
        resp.raise_for_status()
        return resp.json()["token"], eps["catalog"]


def throughput_metrics(root: Path, rounds: int, seconds: float, concurrency: int, listings: int) -> list[dict]:
    offset = 23_000
    # The measured stack is the gateway's, rate limit included, but set above the load: a
    # refused request would be cheaper than a served one and flatter the ratio.
    exchange = Exchange(root / "state", Ports().shifted(offset), log=lambda m: None,
                        overrides={"gateway": {"RDX_RATE_PER_S": "1000000", "RDX_RATE_BURST": "1000000"}})
    bare_port = free_port()
    bare = None
    try:
        exchange.start()
        eps = exchange.endpoints()
        token, catalog = asyncio.run(seed(eps, exchange.state, listings))
        time.sleep(2)  # the catalog indexes the listings
        code = BARE_APP.replace("CATALOG", repr(catalog)).replace("PORT", str(bare_port))
        bare = subprocess.Popen([sys.executable, "-c", code])
        wait_until(lambda: http_ok(f"http://{LOOPBACK}:{bare_port}/docs"), 30, "the bare FastAPI endpoint")
        gateway_url, bare_url = f"{eps['gateway']}/v1/listings", f"http://{LOOPBACK}:{bare_port}/v1/listings"
        auth = {"authorization": f"Bearer {token}"}
        asyncio.run(load(gateway_url, auth, 2, concurrency))  # warm-up
        asyncio.run(load(bare_url, {}, 2, concurrency))
        gw, base, errors = [], [], 0
        for _ in range(rounds):
            rate, errs = asyncio.run(load(gateway_url, auth, seconds, concurrency))
            gw.append(rate)
            errors += errs
            base.append(asyncio.run(load(bare_url, {}, seconds, concurrency))[0])
    finally:
        if bare:
            bare.terminate()
        exchange.stop()
    ratio = median(gw) / median(base)
    if errors:
        print(f"{errors} gateway answers were not 200", file=sys.stderr)
    return [metric("authorized_search_req_per_s", median(gw), "req/s", baseline_name="bare_fastapi_search_req_per_s",
                   baseline_value=median(base), bar=">= 0.5 (ratio)", passed=ratio >= 0.5 and errors == 0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--listings", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    metrics = policy_metrics(args.rounds, args.decisions)
    with tempfile.TemporaryDirectory(prefix="rdx-bench-gateway.") as tmp:
        metrics += throughput_metrics(Path(tmp), args.rounds, args.seconds, args.concurrency, args.listings)
    notes = (f"{args.rounds} interleaved rounds; {args.decisions} decisions per round over a role x level x op x grant"
             f" mix; {args.concurrency} concurrent keep-alive clients for {args.seconds}s per round against one"
             " uvicorn worker, load generator on the same 2 cores")
    path = write("gateway", metrics, notes, args.out)
    print(path.read_text())
    return 0 if all(m["passed"] is not False for m in metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
