"""A shared harness for job-type integration tests: real member compute nodes (``python -m
services.compute``) on the session's real CometBFT chain and Kafka broker, with members
registered, funded and their datasets listed on chain, the consumer's node behind a recording
TCP proxy, and helpers to submit a job with its grants and to wait for its outcome.

Parameterised by the member ids, so several test modules can each start their own members in one
session::

    net = await start_net(chain, kafka, root, consumer="zc-1", members=["zc-1", "p-1"],
                          listings={"p-1": ["accounts"]}, min_group=5)
    try:
        await net.submit("job-1", "he_scoring", ["p-1.accounts"], params)
        record = await net.wait_chain("job-1")
        await net.settled("job-1", record)
        result = net.result("job-1")
    finally:
        await net.stop()

Each member's files are in ``root/<member>/`` with a ``datasets.json`` written by the caller
before ``start_net``. Give the consumer an id that sorts after the providers' to make every
provider dial it (through the proxy), so the proxy sees every byte of every job.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from rdx.components import LOOPBACK, ServiceProcess, compute_node, free_port
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.compute import results
from services.compute.datasets import Datasets
from test_compute import TcpProxy, job_trail

OPS = ["aggregation", "he_scoring", "supply_chain_verification"]
PRICE = 50


class JobNet:
    def __init__(self, chain: ChainClient, chain_id: str, kafka: str, association: Identity, root: Path,
                 consumer: str, tag: str, ops: list[str]):
        self.chain, self.chain_id, self.kafka, self.association, self.root = chain, chain_id, kafka, association, root
        self.consumer, self.tag, self.ops = consumer, tag, ops
        self.ids: dict[str, Identity] = {}
        self.node_ids: dict[str, Identity] = {}
        self.nodes: dict[str, ServiceProcess] = {}
        self.proxy: TcpProxy | None = None
        self.grants = 0

    async def tx(self, who, type_, payload):
        return await self.chain.submit(who, type_, payload)

    async def balance(self, member):
        return await self.chain.query(f"/bank/balance/{member}") or 0

    def http(self, member, path):
        try:
            with urllib.request.urlopen(f"{self.nodes[member].url}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    async def node_job(self, member, job):
        status, body = await asyncio.to_thread(self.http, member, f"/jobs/{job}")
        return body if status == 200 else None

    async def submit(self, job, type_, assets, params, timeout_s=180, max_runs=10):
        """Requests and approves a grant per asset for the consumer, then submits the job."""
        inputs = []
        for asset in assets:
            self.grants += 1
            gid = f"gk-{self.tag}-{self.grants}"
            owner = asset.rsplit(".", 1)[0]
            await self.tx(self.ids[self.consumer], "access.Request", {
                "id": gid, "asset": asset, "operations": self.ops, "purpose": "job tests",
                "expires_at": int(time.time()) + 86_400, "max_runs": max_runs})
            await self.tx(self.ids[owner], "access.Approve", {"id": gid})
            inputs.append({"asset": asset, "grant": gid})
        await self.tx(self.ids[self.consumer], "jobs.Submit", {
            "id": job, "type": type_, "inputs": inputs, "params": params,
            "max_price": PRICE * len(assets) + 50, "timeout_s": timeout_s})

    async def wait_chain(self, job, timeout=120):
        deadline = time.monotonic() + timeout
        record = None
        while time.monotonic() < deadline:
            record = await self.chain.query(f"/jobs/{job}")
            if record and record["status"] in ("completed", "failed", "aborted"):
                return record
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job} did not end within {timeout}s: {record}\n"
                             f"{await job_trail(self.nodes, self.node_job, job)}")

    async def wait_node(self, member, job, pred, timeout=60):
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = await self.node_job(member, job)
            if row and pred(row):
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(f"{member}: job {job} not as expected within {timeout}s: {row}\n"
                             f"{await job_trail(self.nodes, self.node_job, job)}")

    async def settled(self, job, record, result_holders=None) -> None:
        """Completed, every participant attested the chain's result hash, the escrow settled, and
        no node but those of ``result_holders`` (default: the consumer) holds a result."""
        assert record["status"] == "completed", record
        hashes = {(await self.node_job(m, job))["result_hash"] for m in record["participants"]}
        assert hashes == {record["result_hash"]}
        assert await self.chain.query(f"/bank/escrow/{job}") is None
        holders = {self.consumer} if result_holders is None else set(result_holders)
        for m in record["participants"]:
            if m not in holders:  # once its node has seen the chain complete the job (it confirms the event first)
                await self.wait_node(m, job, lambda r: r["status"] == "completed", timeout=15)
                assert self.http(m, f"/jobs/{job}/result")[0] == 404

    def result(self, job):
        deadline = time.monotonic() + 30
        status, body = self.http(self.consumer, f"/jobs/{job}/result")
        while status == 409 and time.monotonic() < deadline:  # a held-back result: opened once the keys are on chain
            time.sleep(0.2)
            status, body = self.http(self.consumer, f"/jobs/{job}/result")
        assert status == 200, body
        return results.open_envelope(self.node_ids[self.consumer], body["envelope"])

    async def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.proxy:
            self.proxy.stop()
        await self.chain.close()


async def start_net(chain, kafka, root: Path, *, consumer: str, members: list[str], listings: dict[str, list[str]],
                    min_group: int = 1, deposit: int = 100_000, node_env: dict[str, dict[str, str]] | None = None,
                    ops: list[str] = OPS, modules: dict[str, str] | None = None, **node_settings) -> JobNet:
    """Registers, funds and lists (and grants) for ``ops``, starts every member's node and waits until
    all are ready. ``node_settings`` apply to every node; ``node_env`` adds environment variables to
    one member's (``RDX_COMETBFT_RPC`` to reach the chain through a proxy, say); ``modules`` runs a
    member's node as a wrapper module (a deviating party: tests/faults/malicious_consumer.py)."""
    client = ChainClient(chain.rpc_url, chain.chain_id)
    net = JobNet(client, chain.chain_id, kafka.bootstrap, chain.association, root, consumer, os.urandom(3).hex(),
                 ops)
    grpc = {m: free_port() for m in members}
    net.proxy = TcpProxy(grpc[consumer]).start()
    endpoints = {m: f"{LOOPBACK}:{grpc[m]}" for m in members}
    endpoints[consumer] = f"{LOOPBACK}:{net.proxy.port}"
    try:
        for m in members:
            net.ids[m] = Identity.generate(m)
            net.node_ids[m] = Identity.generate(f"{m}.node")
            net.node_ids[m].save(root / "keys" / f"{m}.node.json")
            await net.tx(chain.association, "members.Register", {
                "id": m, "name": m, "roles": ["consumer", "provider"], "public_key": net.ids[m].public_key,
                "node": {"public_key": net.node_ids[m].public_key, "endpoint": endpoints[m]}})
            await net.tx(chain.association, "bank.Deposit", {"to": m, "amount": deposit, "reference": f"dep-{m}"})
        for m, sets in listings.items():
            datasets = Datasets.from_path(root / m / "datasets.json")
            for ds in sets:
                await net.tx(net.ids[m], "assets.List", {
                    "id": f"{m}.{ds}", "level": "L3", "operations": ops, "commitment": datasets.get(ds).summary()[0],
                    "price": {"model": "fixed", "amount": PRICE}, "min_group_size": min_group,
                    "metadata": example_metadata(f"{ds} of {m}")})
        settings = {"workers": 1, "peer_wait_s": 10, "max_attempts": 2, "shutdown_grace_s": 5, **node_settings}
        for m in members:
            net.nodes[m] = compute_node(
                m, kafka=kafka.bootstrap, rpc_url=chain.rpc_url, chain_id=chain.chain_id, state_root=root / "state",
                key_file=root / "keys" / f"{m}.node.json", grpc_port=grpc[m], datasets=root / m / "datasets.json",
                log_dir=root / "logs" / m, **settings)
            net.nodes[m].env.update((node_env or {}).get(m, {}))
            net.nodes[m].module = (modules or {}).get(m, "")
            net.nodes[m].start(timeout=120, wait=False)
        for node in net.nodes.values():
            node.wait_ready(120)
    except BaseException:
        await net.stop()
        raise
    return net
