"""``rdx demo``: drive a running local exchange through what it can do today, and show the
on-chain evidence of each step. Exits non-zero if any step's outcome is wrong.

Today that is the chain's side of the seed's flows: an association admits members with their
compute-node keys and issues credits, a provider lists a dataset by its commitment, a consumer
asks for access and the provider grants it; every fact reaches Kafka through the relay. The
privacy-preserving jobs themselves arrive with the compute service.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.chain import ChainClient, Committed
from services.common.events import CHAIN_EVENTS, Event
from services.common.identity import Identity

MEMBERS = {
    "bank": ("Bank of the Region", ["consumer", "provider"]),
    "telco": ("Regional Telco", ["provider", "consumer"]),
    "logistics": ("Logistics Co", ["provider", "consumer"]),
    "manufacturer": ("Manufacturer Ltd", ["provider", "consumer"]),
}


@dataclass
class Step:
    name: str
    outcome: str
    seconds: float
    evidence: str


def _identity(keys: Path, account: str) -> Identity:
    path = keys / f"{account}.json"
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate(account)
    identity.save(path)
    return identity


def _commitment(rows: list[str]) -> str:
    """SHA-256 over the sorted rows: stands for the dataset without revealing it."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update(hashlib.sha256(row.encode()).digest())
    return h.hexdigest()


class Demo:
    def __init__(self, state: Path, say=print):
        self.state, self.say = state, say
        self.eps = json.loads((state / "endpoints.json").read_text())
        self.keys = state / "keys"
        self.association = Identity.load(self.keys / "association.json")
        self.steps: list[Step] = []
        self.run = time.strftime("%Y%m%d%H%M%S")

    async def step(self, name: str, coro) -> Committed | None:
        self.say(f"… {name}")
        started = time.monotonic()
        result, outcome, evidence = await coro
        self.steps.append(Step(name, outcome, time.monotonic() - started, evidence))
        return result

    async def main(self) -> bool:
        async with ChainClient(self.eps["cometbft"], "rdx-local") as chain:
            self.chain = chain
            ids = {m: _identity(self.keys, m) for m in MEMBERS}
            nodes = {m: _identity(self.keys, f"{m}.node") for m in MEMBERS}
            await self.step("association admits four members with their node keys", self.admit(ids, nodes))
            await self.step("association issues 100,000 credits to the bank", self.deposit())
            rows = [f"+86-1{random.randrange(10**9, 10**10)}" for _ in range(100_000)]
            asset = f"telco.subscribers.{self.run}"
            await self.step("telco lists 100k subscriber phone numbers (L3, PSI only) by commitment",
                            self.list_asset(ids["telco"], asset, _commitment(rows), len(rows)))
            await self.step("bank asks for PSI access for joint marketing", self.request(ids["bank"], asset))
            await self.step("telco approves: the grant is on chain", self.approve(ids["telco"], asset))
            await self.step("every chain event reached Kafka through the relay", self.events_in_kafka())
        return all(s.outcome.startswith("ok") for s in self.steps)

    async def _submit(self, who: Identity, type_: str, payload: dict) -> Committed:
        return await self.chain.submit(who, type_, payload)

    async def admit(self, ids, nodes):
        done = []
        for member_id, (name, roles) in MEMBERS.items():
            if await self.chain.query(f"/members/{member_id}") is None:
                c = await self._submit(self.association, "members.Register", {
                    "id": member_id, "name": name, "roles": roles, "public_key": ids[member_id].public_key,
                    "node": {"public_key": nodes[member_id].public_key, "endpoint": "127.0.0.1:50051"}})
                done.append(f"{member_id}@{c.height}")
        members = [await self.chain.query(f"/members/{m}") for m in MEMBERS]
        ok = all(m and m["status"] == "active" for m in members)
        return None, "ok" if ok else "FAILED: a member is missing", ", ".join(done) or "already members"

    async def deposit(self):
        before = await self.chain.query("/bank/balance/bank") or 0
        c = await self._submit(self.association, "bank.Deposit", {"to": "bank", "amount": 100_000,
                                                                   "reference": f"demo-{self.run}"})
        after = await self.chain.query("/bank/balance/bank")
        ok = after == before + 100_000
        return c, "ok" if ok else f"FAILED: balance {after}", f"height {c.height}, tx {c.tx_hash[:16]}"

    async def list_asset(self, telco, asset, commitment, rows):
        c = await self._submit(telco, "assets.List", {
            "id": asset, "level": "L3", "operations": ["psi", "psi_cardinality"], "commitment": commitment,
            "price": {"model": "fixed", "amount": 500}, "min_group_size": 1,
            "metadata": {
                "title": "Subscriber phone numbers", "region": "CN-GD", "industry": ["telecom"],
                "tags": ["subscribers", "joint-marketing"], "update_cycle": "daily", "row_count": rows,
                "description": "Hashed phone numbers of active subscribers, for private set intersection only.",
                "data_start": "2024-01-01", "last_updated": "2025-06-30",
                "columns": [{"name": "phone_hash", "type": "string", "sensitivity": "identifier",
                             "description": "salted SHA-256 of the phone number"}],
                "licence": "rdx-member-data-1.0",
                "usage_terms": "PSI and PSI-cardinality only; no re-identification of matched subscribers."}})
        listed = await self.chain.query(f"/assets/{asset}")
        ok = listed and listed["commitment"] == commitment and listed["status"] == "listed"
        return c, "ok" if ok else "FAILED", f"height {c.height}, tx {c.tx_hash[:16]}, commitment {commitment[:16]}…"

    async def request(self, bank, asset):
        c = await self._submit(bank, "access.Request", {
            "id": f"grant.{self.run}", "asset": asset, "operations": ["psi"], "purpose": "joint marketing",
            "expires_at": int(time.time()) + 30 * 86_400, "max_runs": 10})
        grant = await self.chain.query(f"/access/grant.{self.run}")
        ok = grant and grant["status"] == "pending" and grant["needs"] == ["provider"]
        return c, "ok" if ok else "FAILED", f"height {c.height}, pending provider approval"

    async def approve(self, telco, asset):
        c = await self._submit(telco, "access.Approve", {"id": f"grant.{self.run}"})
        grant = await self.chain.query(f"/access/grant.{self.run}")
        ok = grant and grant["status"] == "granted"
        return c, "ok" if ok else "FAILED", f"height {c.height}, tx {c.tx_hash[:16]}"

    async def events_in_kafka(self):
        from aiokafka import AIOKafkaConsumer

        want = {f"grant.{self.run}": "AccessGranted", f"demo-{self.run}": "CreditsDeposited"}
        consumer = AIOKafkaConsumer(CHAIN_EVENTS, bootstrap_servers=self.eps["kafka"], auto_offset_reset="earliest")
        await consumer.start()
        seen, count = set(), 0
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(seen) < len(want):
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    for msg in messages:
                        count += 1
                        event = Event.decode(msg.value)
                        key = event.data.get("grant") or event.data.get("reference")
                        if want.get(key) == event.type:
                            seen.add(key)
        finally:
            await consumer.stop()
        ok = len(seen) == len(want)
        return None, "ok" if ok else f"FAILED: missing {set(want) - seen}", f"{count} events on {CHAIN_EVENTS}"

    def summary(self) -> str:
        lines = [f"{'step':<72} {'result':<8} {'time':>7}  evidence"]
        for s in self.steps:
            lines.append(f"{s.name:<72} {s.outcome:<8} {s.seconds:>6.2f}s  {s.evidence}")
        return "\n".join(lines)


def run(state: Path) -> bool:
    demo = Demo(state)
    ok = asyncio.run(demo.main())
    print()
    print(demo.summary())
    print()
    print("demo: every step's outcome is as expected" if ok else "demo: a step's outcome is WRONG")
    print(f"the exchange is still running (state in {state}); `make down` stops it")
    return ok
