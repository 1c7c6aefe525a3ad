"""Issue 18's bar: a byzantine validator's RPC (tests/faults/byzantine_rpc.py, a proxy in front of
the session's real CometBFT node) rewrites query answers, and every reader of state that makes a
trust decision detects every rewrite and refuses: the verified reader (services/common/verified.py),
the SDK (rdx/sdk.py, verify=True), the gateway (its member-key lookups, a real gateway process),
the compute node (its peer-key and grant checks) and the Kafka consumers' check of chain events
(services/common/chainevents.py, proven from the events the app commits in state). Through the
honest proxy, all of them read."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import sqlite3
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone

import pytest

from rdx.components import ServiceProcess, compute_node, free_port
from rdx.sdk import Gateway, GatewayError

from services.common.chain import ChainClient
from services.common.chainevents import ChainEventVerifier, ChainUnavailable, NotOnChain, digest_of
from services.common.identity import Identity
from services.common.lightclient import Validator
from services.common.listing import example_metadata
from services.common.verified import Anchor, VerificationError, VerifiedChain
from services.billing.__main__ import chain_books
from services.compute.chainview import ChainUnverified
from services.compute.chainview import ChainView as ComputeView
from services.consensus.relay import to_event
from services.consensus.state import ChainEvent
from tests.faults.byzantine_rpc import GARBAGE, ByzantineRpc

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
            # The reader verifies a header after that write: an answer older than it is now stale for
            # certain (before, on a loaded machine, the chain could still be at the answer's own height).
            await reader.query(t["balance"])
            proxy.lie(mode, t["balance"])
            with pytest.raises(VerificationError):
                await reader.query(t["balance"])
        proxy.lie(None)
        assert await reader.query(t["balance"]) >= 5001
        for _ in range(5):  # a read after a write sees the write (the key changed in the latest block)
            before = await reader.query(t["balance"])
            await world.touch()
            assert await reader.query(t["balance"]) == before + 1
    for garbage in [(method, n) for method, answers in GARBAGE.items() for n in range(len(answers))]:
        async with VerifiedChain(proxy.url, world.anchor) as reader:  # wrong shapes, to a reader that trusts nothing yet
            proxy.lie("garbage", t["key"])
            proxy.garbage = garbage
            with pytest.raises(VerificationError):
                await reader.query(t["key"])


async def test_a_read_racing_a_block_is_proven_by_a_header_that_already_exists(world, proxy):
    """A ``status`` answered just before a block committed says a height one behind the app's. The
    reader then asks at the height before the app's, whose proving header exists. It asked for the
    app's latest state before, whose proving header an idle chain makes only at its empty-block
    interval (1 s under `rdx up`): every such read waited up to a second (the bench's jobs did)."""
    t = targets(world)
    async with VerifiedChain(proxy.url, world.anchor) as reader, \
            ChainClient(world.chain.rpc_url, world.chain.chain_id) as direct:
        for _ in range(3):
            before = await reader.query(t["balance"])
            await world.touch()  # a write in block W; CometBFT makes its proof block W + 1 at once
            written = await direct.height()
            while await direct.height() == written:  # W + 1, and then no block for a second
                await asyncio.sleep(0.005)
            latest, lies = await direct.height(), proxy.lies
            # The race is status's: the reader asks status only when its newest header is older than
            # GUESS_S (and fetches headers without it), so that header is made old here.
            reader._latest_at = float("-inf")
            proxy.lie("lagging_status")
            value, height = await reader.query_bytes(t["balance"])
            assert proxy.lies == lies + 1
            assert json.loads(value) == before + 1
            assert height + 1 <= latest, f"proven at {height}: it waited for header {height + 1}, made after the read began"


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


def test_the_sdk_refuses_every_rewrite(world, proxy, tmp_path):
    """A member's SDK reads from the lying endpoint it was given (the gateway is not asked): each
    rewrite raises VerificationError; the honest proxy's answers are the chain's. The gateway
    here is never reached for these reads, so an unreachable URL stands for it."""
    t = targets(world)
    with Gateway("http://127.0.0.1:9", identity=world.consumer, chain_id=world.chain.chain_id,
                 chain_rpc=proxy.url, trust=world.anchor) as sdk:
        assert sdk.account(world.consumer.account)["public_key"] == world.consumer.public_key
        assert sdk.balance(world.consumer.account) >= 5000
        assert sdk.grant(world.grant)["status"] == "pending"
        for mode, read in [("key", lambda: sdk.account(world.consumer.account)),
                           ("balance", lambda: sdk.balance(world.consumer.account)),
                           ("grant", lambda: sdk.grant(world.grant)),
                           ("absent", lambda: sdk.grant(world.grant)),
                           ("forged_header", lambda: sdk.account(world.consumer.account))]:
            target = {"key": t["key"], "balance": t["balance"], "grant": t["grant"], "absent": t["grant"],
                      "forged_header": t["key"]}[mode]
            proxy.lie(mode, target)
            with pytest.raises(VerificationError):
                read()
        proxy.lie(None)
        assert sdk.grant(world.grant)["status"] == "pending"
    with Gateway("http://127.0.0.1:9", identity=world.consumer, chain_id=world.chain.chain_id) as unverified:
        with pytest.raises(VerificationError, match="trust anchor"):
            unverified.balance(world.consumer.account)


def test_the_gateway_refuses_a_member_key_from_a_lying_node(world, proxy, tmp_path):
    """A real gateway whose chain endpoint is the proxy: a member's signed request is accepted
    through the honest proxy; when the proxy swaps the member's key for the attacker's, the
    attacker's signed request is refused (502) and so is the member's, and no key is cached; a
    present key claimed absent is 502, not "unknown key"; a job whose grant is rewritten (claimed
    granted, or absent) is refused 502 instead of relayed; an account it shows, rewritten, is 502. (The gateway decides nothing on a
    balance; the SDK's and the reader's tests cover that rewrite.)"""
    genesis = world.chain.node.home / "config" / "genesis.json"
    proc = ServiceProcess("gateway", free_port(), {
        "RDX_KAFKA_BOOTSTRAP": world.chain.kafka, "RDX_COMETBFT_RPC": proxy.url, "RDX_CHAIN_ID": world.chain.chain_id,
        "RDX_STATE_ROOT": str(tmp_path / "state"), "RDX_TRUSTED_GENESIS": str(genesis)}, tmp_path / "logs")
    proc.start()
    attacker = Identity(world.consumer.account, Identity.generate("attacker").signing_key)
    proxy.fake_key = attacker.public_key
    try:
        with Gateway(proc.url, identity=world.consumer, chain_id=world.chain.chain_id, verify=False) as member:
            assert member.request("GET", "/v1/policy")["version"] >= 1
            for keyid in (f"{world.consumer.account}/", "x?limit=1"):  # ids that would make the read a listing
                with Gateway(proc.url, identity=Identity(keyid, attacker.signing_key), verify=False,
                             chain_id=world.chain.chain_id) as g:
                    with pytest.raises(GatewayError) as refused:
                        g.request("GET", "/v1/policy")
                    assert refused.value.status == 401, refused.value.body
            proxy.lie("key", f"accounts/{world.consumer.account}")
            for who in (attacker, world.consumer):
                with Gateway(proc.url, identity=who, chain_id=world.chain.chain_id, verify=False) as g:
                    time.sleep(2.1)  # past the view's cache
                    with pytest.raises(GatewayError) as refused:
                        g.request("GET", "/v1/policy")
                    assert refused.value.status == 502, refused.value.body
            proxy.lie("forged_header", f"accounts/{world.consumer.account}")
            with Gateway(proc.url, identity=attacker, chain_id=world.chain.chain_id, verify=False) as g:
                with pytest.raises(GatewayError) as refused:
                    g.request("GET", "/v1/policy")
                assert refused.value.status == 502
            proxy.lie("absent", f"accounts/{world.consumer.account}")  # not "unknown key": a lie detected
            time.sleep(2.1)
            with pytest.raises(GatewayError) as refused:
                member.request("GET", "/v1/policy")
            assert refused.value.status == 502
            # The grant its policy check reads before relaying a job: still pending on chain, claimed
            # granted (and then claimed absent); the job is refused for the lie, not relayed.
            proxy.lie(None)
            for mode in ("grant", "absent"):
                proxy.lie(mode, f"access/{world.grant}")
                with pytest.raises(GatewayError) as refused:
                    member.submit_job(f"byz-job-{mode}-{world.tag}", "aggregation",
                                      [{"asset": world.asset, "grant": world.grant}], max_price=100)
                assert refused.value.status == 502, refused.value.body
            proxy.lie(None)
            with pytest.raises(GatewayError) as refused:  # honest: the pending grant does not allow it
                member.submit_job(f"byz-job-honest-{world.tag}", "aggregation",
                                  [{"asset": world.asset, "grant": world.grant}], max_price=100)
            assert refused.value.status == 403, refused.value.body
            # What the gateway shows is proven too: an account's key rewritten is 502, not shown.
            shown = member.request("GET", f"/v1/accounts/{world.node.account}")
            assert shown["public_key"] == world.node.public_key
            proxy.lie("key", f"accounts/{world.node.account}")
            with pytest.raises(GatewayError) as refused:
                member.request("GET", f"/v1/accounts/{world.node.account}")
            assert refused.value.status == 502, refused.value.body
            proxy.lie(None)
            assert member.request("GET", "/v1/policy")["version"] >= 1
        assert proxy.lies >= 3
    finally:
        proc.stop()


async def test_the_compute_nodes_peer_and_grant_checks_refuse_every_rewrite(world, proxy, tmp_path):
    """The compute node's ChainView (what its peer handshake and grant checks call) on the proxy:
    a peer's node key, a grant's status or its absence rewritten is ChainUnverified, so no peer is
    admitted and no job runs on it; honest answers pass. Then a real compute node on the proxy: its
    own registration check reads its key proven, and stops calling itself registered when the
    proxy swaps it."""
    member, node = world.provider.account, world.node.account
    async with ChainClient(proxy.url, world.chain.chain_id) as client:
        view = ComputeView(client, VerifiedChain(client, world.anchor))
        assert await view.node_key(member, node) == world.node.public_key
        assert (await view.grant(world.grant))["status"] == "pending"
        for mode, target, check in [("key", f"accounts/{node}", lambda: view.node_key(member, node)),
                                    ("forged_header", f"accounts/{node}", lambda: view.node_key(member, node)),
                                    ("grant", f"access/{world.grant}", lambda: view.grant(world.grant)),
                                    ("absent", f"access/{world.grant}", lambda: view.grant(world.grant)),
                                    ("key", f"members/{member}", lambda: view.node_key(member, node))]:
            proxy.lie(mode, target)
            with pytest.raises(ChainUnverified):
                await check()
        proxy.lie(None)
        assert await view.node_key(member, node) == world.node.public_key

    world.node.save(tmp_path / "node.json")
    (tmp_path / "datasets.json").write_text('{"datasets": []}')
    proc = compute_node(member, kafka=world.chain.kafka, rpc_url=proxy.url, chain_id=world.chain.chain_id,
                        state_root=tmp_path / "state", key_file=tmp_path / "node.json", grpc_port=free_port(),
                        datasets=tmp_path / "datasets.json", log_dir=tmp_path / "logs",
                        trusted_genesis=str(world.chain.node.home / "config" / "genesis.json"))
    proc.start(timeout=120)

    def registered() -> bool:
        with urllib.request.urlopen(f"{proc.url}/node", timeout=5) as resp:
            return json.loads(resp.read())["registered_on_chain"]

    try:
        await wait(registered, True)
        proxy.lie("key", f"accounts/{node}")
        await wait(registered, False)
        assert "did not verify" in (tmp_path / "logs" / "compute.log").read_text()
    finally:
        proc.stop()


async def wait(fn, expected, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (await asyncio.to_thread(fn)) != expected:
        assert time.monotonic() < deadline, f"{fn.__name__} did not become {expected}"
        await asyncio.sleep(0.2)


def test_rdx_verify_proves_what_it_prints_and_refuses_a_lying_endpoint(world, proxy):
    genesis = str(world.chain.node.home / "config" / "genesis.json")

    def rdx_verify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rdx", "verify", *args, "--rpc", proxy.url, "--genesis", genesis],
                              capture_output=True, text=True, timeout=120)

    done = rdx_verify("listing", world.asset)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [v["version"] for v in out["verified"]["versions"]] == [1]
    height, digest = out["trusted_header"].split(":")
    done = rdx_verify("grant", world.grant)
    assert done.returncode == 0 and json.loads(done.stdout)["verified"]["status"] == "pending", done.stderr
    done = rdx_verify("balance", world.consumer.account)
    assert json.loads(done.stdout)["verified"]["balance"] >= 5000
    done = subprocess.run([sys.executable, "-m", "rdx", "verify", "account", world.consumer.account, "--rpc", proxy.url,
                           "--trusted-header", f"{height}:{digest}", "--chain-id", world.chain.chain_id],
                          capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["verified"]["public_key"] == world.consumer.public_key, done.stderr
    for mode, what, target in [("key", ("listing", world.asset), f"asset-versions/{world.asset}/00000001"),
                               ("grant", ("grant", world.grant), f"access/{world.grant}"),
                               ("balance", ("balance", world.consumer.account), f"bank/balance/{world.consumer.account}"),
                               ("absent", ("account", world.consumer.account), f"accounts/{world.consumer.account}")]:
        proxy.lie(mode, target)
        done = rdx_verify(*what)
        assert done.returncode == 1 and "NOT VERIFIED" in done.stderr, (mode, done.stdout, done.stderr)
        assert not done.stdout
    proxy.lie(None)
    done = rdx_verify("job", f"no-such-job-{world.tag}")
    assert done.returncode == 1 and "proven absent" in done.stderr


def _committed_event(chain, entity: str):
    """The event the relay publishes for the latest chain event about ``entity`` (from its outbox)."""
    db = sqlite3.connect(chain.state / "state" / "consensus" / "chain.sqlite")
    try:
        row = db.execute("SELECT height, tx_index, event_index, time, type, entity, data FROM events WHERE entity = ? "
                         "ORDER BY height DESC, tx_index DESC, event_index DESC LIMIT 1", (entity,)).fetchone()
    finally:
        db.close()
    assert row, f"no committed event about {entity}"
    return to_event(ChainEvent(*row[:6], json.loads(row[6])))


async def test_chain_events_are_proven_from_state_and_a_lying_nodes_block_results_fool_only_the_unproven_check(
        world, proxy, tmp_path):
    real = _committed_event(world.chain, f"member:{world.consumer.account}")
    forged = real.model_copy(update={"data": {**real.data, "forged": True}})
    height = real.data["height"]
    async with ChainClient(proxy.url, world.chain.chain_id) as client, \
            VerifiedChain(client, world.anchor) as reader:
        proven, believing = ChainEventVerifier(client, reader=reader), ChainEventVerifier(client, reader=None)
        await proven.verify(real)
        await world.touch()  # an event of the block just committed: proven once the next header exists
        await proven.verify(_committed_event(world.chain, f"member:{world.consumer.account}"))
        with pytest.raises(NotOnChain):
            await proven.verify(forged)
        # A relay publishes the forged event and the node vouches for it in block_results.
        proxy.fake_digest = digest_of(forged)
        proxy.lie("block_results", real.id)
        await believing.verify(forged)  # the check that trusts one node is fooled...
        assert proxy.lies > 0
        for verifier in (proven, ChainEventVerifier(client, reader=reader)):  # ...a proven one, cached or not, is not
            with pytest.raises(NotOnChain):
                await verifier.verify(forged)
        # Lies about the proven record itself: the event waits (retried), it is never applied.
        for mode in ("key", "absent"):
            proxy.lie(mode, f"events/{height:012d}")
            lies = proxy.lies
            with pytest.raises(ChainUnavailable):
                await ChainEventVerifier(client, reader=VerifiedChain(client, world.anchor)).verify(real)
            assert proxy.lies > lies, mode
        proxy.lie(None)
        await ChainEventVerifier(client, reader=VerifiedChain(client, world.anchor)).verify(real)
    genesis = str(world.chain.node.home / "config" / "genesis.json")

    def rdx_verify_event(event_id: str, received) -> subprocess.CompletedProcess:
        path = tmp_path / "event.json"
        path.write_bytes(received.encode())
        return subprocess.run([sys.executable, "-m", "rdx", "verify", "event", event_id, "--event", str(path),
                               "--rpc", proxy.url, "--genesis", genesis], capture_output=True, text=True, timeout=120)

    done = rdx_verify_event(real.id, real)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verified"] == {"event": real.id, "type": real.type, "entity": real.entity,
                                                   "digest": digest_of(real), "matches_event_file": True}
    for event_id, received in [(real.id, forged), (f"{height}/0/999", real), ("not-an-id", real)]:
        done = rdx_verify_event(event_id, received)
        assert done.returncode == 1 and "NOT VERIFIED" in done.stderr and not done.stdout, done.stderr
    async with ChainClient(proxy.url, world.chain.chain_id) as client, \
            VerifiedChain(client, world.anchor) as reader:
        proven = ChainEventVerifier(client, reader=reader)
        with pytest.raises(NotOnChain):  # a height not committed yet, claimed by a forged record
            await proven.verify(real.model_copy(update={"id": f"{height + 50}/0/0",
                                                        "data": {**real.data, "height": height + 50}}))


async def test_the_billing_reconciliation_proves_every_amount_and_that_no_account_is_hidden(world, proxy):
    async with ChainClient(proxy.url, world.chain.chain_id) as client, \
            VerifiedChain(client, world.anchor) as reader:
        balances, _, supply, gap = await chain_books(client, reader, set(), set())
        assert gap == [] and balances[world.consumer.account] >= 5000 and supply >= sum(balances.values())
        proxy.omit = world.consumer.account
        proxy.lie("omit", "bank/balance/")
        believed, _, _, _ = await chain_books(client, None, set(), set())
        assert world.consumer.account not in believed and proxy.lies  # unproven, the hidden account is not missed
        balances, _, _, gap = await chain_books(client, reader, set(), set())
        assert world.consumer.account not in balances and gap and "incomplete" in gap[0]
        balances, _, _, gap = await chain_books(client, reader, {world.consumer.account}, set())
        assert gap == [] and balances[world.consumer.account] >= 5000  # an account the read model knows is read anyway
        proxy.lie("balance", f"bank/balance/{world.consumer.account}")
        with pytest.raises(VerificationError):
            await chain_books(client, reader, {world.consumer.account}, set())
