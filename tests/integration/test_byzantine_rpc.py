"""Issue 18's bar: a byzantine validator's RPC (tests/faults/byzantine_rpc.py, a proxy in front of
the session's real CometBFT node) rewrites query answers, and every reader of state that makes a
trust decision detects every rewrite and refuses: the verified reader (services/common/verified.py),
the SDK (rdx/sdk.py, verify=True), the gateway (its member-key lookups, a real gateway process)
and the compute node (its peer-key and grant checks). Through the honest proxy, all of them read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from datetime import datetime, timezone

import pytest

from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.lightclient import Validator
from services.common.listing import example_metadata
from services.common.verified import Anchor, VerificationError, VerifiedChain
from tests.faults.byzantine_rpc import ByzantineRpc

LIES = ("key", "absent", "stale", "relabelled", "forged_header")


class World:
    """A member with a compute node, a funded balance, a listing and a grant on the session's chain."""

    def __init__(self, chain):
        tag = secrets.token_hex(3)
        self.chain, self.tag = chain, tag
        self.provider, self.consumer = Identity.generate(f"byz-p-{tag}"), Identity.generate(f"byz-c-{tag}")
        self.node = Identity.generate(f"byz-p-{tag}.node")
        self.asset, self.grant = f"byz-p-{tag}.data", f"byz-g-{tag}"

    @property
    def anchor(self) -> Anchor:
        return Anchor.from_genesis(self.chain.node.home / "config" / "genesis.json")

    async def make(self) -> None:
        a = self.chain.association
        async with ChainClient(self.chain.rpc_url, self.chain.chain_id) as c:
            await c.submit(a, "members.Register", {
                "id": self.provider.account, "name": "Byz P", "roles": ["provider", "consumer"],
                "public_key": self.provider.public_key,
                "node": {"public_key": self.node.public_key, "endpoint": "127.0.0.1:1"}})
            await c.submit(a, "members.Register", {"id": self.consumer.account, "name": "Byz C", "roles": ["consumer"],
                                                   "public_key": self.consumer.public_key})
            await c.submit(a, "bank.Deposit", {"to": self.consumer.account, "amount": 5000, "reference": f"d-{self.tag}"})
            await c.submit(self.provider, "assets.List", {
                "id": self.asset, "level": "L3", "operations": ["aggregation"], "commitment": "ab" * 32,
                "price": {"model": "fixed", "amount": 10}, "min_group_size": 1, "metadata": example_metadata("byz")})
            await c.submit(self.consumer, "access.Request", {
                "id": self.grant, "asset": self.asset, "operations": ["aggregation"], "purpose": "byzantine tests",
                "expires_at": int(time.time()) + 86_400, "max_runs": 1})

    async def touch(self) -> None:
        """A write, so the app hash moves on (an old answer is then of an older state)."""
        async with ChainClient(self.chain.rpc_url, self.chain.chain_id) as c:
            await c.submit(self.chain.association, "bank.Deposit",
                           {"to": self.consumer.account, "amount": 1, "reference": f"t-{secrets.token_hex(4)}"})


@pytest.fixture(scope="module")
def world(chain):
    w = World(chain)
    asyncio.run(w.make())
    return w


@pytest.fixture
def proxy(chain):
    with ByzantineRpc(chain.rpc_url) as p:
        yield p


def targets(w: World) -> dict[str, str]:
    return {"key": f"accounts/{w.consumer.account}", "balance": f"bank/balance/{w.consumer.account}",
            "grant": f"access/{w.grant}", "node": f"accounts/{w.node.account}"}


async def test_the_verified_reader_refuses_every_rewrite_and_reads_through_an_honest_proxy(world, proxy):
    t = targets(world)
    async with VerifiedChain(proxy.url, world.anchor) as reader:
        assert (await reader.query(t["key"]))["public_key"] == world.consumer.public_key
        assert await reader.query(t["balance"]) >= 5000
        assert (await reader.query(t["grant"]))["status"] == "pending"
        assert await reader.query(f"accounts/nobody-{world.tag}") is None
        for mode, target in [("key", t["key"]), ("balance", t["balance"]), ("grant", t["grant"]),
                             ("absent", t["key"]), ("forged_header", t["key"]), ("forged_header", t["balance"])]:
            proxy.lie(mode, target)
            lies = proxy.lies
            with pytest.raises(VerificationError):
                await reader.query(target)
            assert proxy.lies > lies, mode
        for mode in ("stale", "relabelled"):
            proxy.lie(None, t["balance"])
            await reader.query(t["balance"])  # the proxy keeps its first answer
            await world.touch()
            proxy.lie(mode, t["balance"])
            with pytest.raises(VerificationError):
                await reader.query(t["balance"])
        proxy.lie(None)
        assert await reader.query(t["balance"]) >= 5001


async def test_a_wrong_anchor_or_a_forged_first_header_is_refused(world, proxy):
    doc_anchor = world.anchor
    pub = base64.b64decode(Identity.generate("v").public_key)
    other = Anchor(doc_anchor.chain_id, doc_anchor.height,
                   validators=(Validator(hashlib.sha256(pub).digest()[:20], pub, 10),))
    async with VerifiedChain(proxy.url, other) as reader:
        with pytest.raises(VerificationError, match="genesis"):
            await reader.query(targets(world)["key"])
    async with VerifiedChain(proxy.url, Anchor.from_header(doc_anchor.chain_id, "3:" + "00" * 32)) as reader:
        with pytest.raises(VerificationError, match="trusted"):
            await reader.query(targets(world)["key"])
    late = lambda: datetime(2100, 1, 1, tzinfo=timezone.utc)  # noqa: E731 (a clock far ahead)
    async with VerifiedChain(proxy.url, doc_anchor, clock=late) as reader:
        with pytest.raises(VerificationError, match="trusting period"):
            await reader.query(targets(world)["key"])
    with pytest.raises(VerificationError):
        Anchor.from_header("x", "12:nothex")
    with pytest.raises(VerificationError):
        Anchor.from_genesis({"chain_id": "x", "validators": []})
