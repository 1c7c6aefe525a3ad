"""Hostile input on a running validator's public surfaces (CometBFT RPC), answered without stopping.

Every class of bad tx and bad query (tests/hostile.py) is sent over RPC, as anyone on the
network can; the node must answer each with a clear refusal and keep committing blocks. Then a
flood of distinct invalid near-maximum-size txs: the app's memory stays bounded and valid txs
keep committing meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse

import httpx
import pytest
from conftest import Chain, running_chain
from hostile import hostile_query_paths, hostile_txs

from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.listing import example_metadata
from services.common.tx import MAX_TX_BYTES, Code, Tx

COMMIT = "ab" * 32


@pytest.fixture(scope="module")
def hostile_chain(toolchain, kafka, tmp_path_factory) -> Chain:
    """A chain of its own: the flood must not slow the session's shared chain."""
    with running_chain(toolchain, kafka, tmp_path_factory.mktemp("hostile")) as c:
        yield c


@pytest.fixture(scope="module")
async def provider(hostile_chain) -> Identity:
    """A member with a listed asset, so quote queries reach the pricing code."""
    who = Identity.generate("hostile-provider")
    async with ChainClient(hostile_chain.rpc_url, hostile_chain.chain_id) as client:
        await client.submit(hostile_chain.association, "members.Register", {
            "id": who.account, "name": "Provider", "roles": ["provider"], "public_key": who.public_key})
        await client.submit(who, "assets.List", {
            "id": "hostile.asset", "level": "L2", "operations": ["psi"], "commitment": COMMIT,
            "price": {"model": "per_record", "amount": 3}, "metadata": example_metadata("Hostile test asset")})
    return who


async def _still_committing(client: ChainClient, association: Identity, tag: str) -> None:
    """The node answers, and a fresh valid tx commits."""
    who = Identity.generate(tag)
    committed = await client.submit(association, "members.Register", {
        "id": who.account, "name": tag, "roles": ["consumer"], "public_key": who.public_key}, timeout=20)
    assert committed.height > 0
    assert (await client.query(f"/members/{who.account}"))["status"] == "active"


async def test_every_hostile_tx_class_is_refused_with_a_code_and_the_node_keeps_committing(hostile_chain, provider):
    async with ChainClient(hostile_chain.rpc_url, hostile_chain.chain_id) as client:
        nonce = await client.next_nonce(provider.account)
        answers = {}
        for name, raw in hostile_txs(provider, hostile_chain.chain_id, nonce).items():
            try:
                answers[name] = await client.broadcast(raw)
            except Exception as exc:  # CometBFT itself refuses some (oversize) before the app
                answers[name] = {"rpc_error": str(exc)}
        for name, answer in answers.items():
            if "rpc_error" in answer:
                assert name == "oversize" and "too large" in answer["rpc_error"], (name, answer)
                continue
            assert answer["code"] not in (Code.OK, 99), (name, answer)  # refused, and not as an internal error
            assert answer["log"], name
        print({name: a.get("code", a.get("rpc_error")) for name, a in answers.items()})
        # The nonce the hostile txs carried is still free: none of them spent it.
        assert await client.next_nonce(provider.account) == nonce
        await _still_committing(client, hostile_chain.association, "after-hostile-txs")


async def test_every_hostile_query_class_is_answered_and_the_node_keeps_committing(hostile_chain, provider):
    async with ChainClient(hostile_chain.rpc_url, hostile_chain.chain_id) as client, \
            httpx.AsyncClient(base_url=hostile_chain.rpc_url, timeout=10) as http:
        for name, path in hostile_query_paths("hostile.asset").items():
            # JSON with \\u escapes, as an attacker may write it (a lone surrogate included)
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "abci_query", "params": {"path": path}})
            response = (await http.post("/", content=body.encode(),
                                        headers={"content-type": "application/json"})).json()["result"]["response"]
            if name in ("superscript digit", "arabic-indic digits", "huge record count", "negative record count",
                        "empty", "only slashes", "surrogate in path", "nul in path", "query string on a key"):
                assert response.get("code") == Code.NOT_FOUND, (name, response)
            else:
                assert response.get("code") == Code.INVALID_QUERY, (name, response)
            assert response.get("log"), name
        # As raw bytes in a GET URI: a path that is not UTF-8 (protobuf strings must be).
        if True:
            for query in ("path=" + urllib.parse.quote(b'"/members/\xff"'), "path=0x2f6d656d626572732fff",
                          "path=0xc3", "path=0x2f71756f74652f686f7374696c652e61737365742fc2b2"):
                resp = await http.get("/abci_query?" + query)
                assert resp.json()["result"]["response"]["code"] in (Code.NOT_FOUND, Code.INVALID_QUERY), resp.text
        # The quote still works for a proper count, and heights keep moving.
        assert await client.query("/quote/hostile.asset/10") == 30
        await _still_committing(client, hostile_chain.association, "after-hostile-queries")


async def test_a_listing_query_is_paged_with_a_cursor(hostile_chain, provider):
    async with ChainClient(hostile_chain.rpc_url, hostile_chain.chain_id) as client:
        people = [Identity.generate(f"paged-{i:02d}") for i in range(12)]
        sent = [await client.submit(hostile_chain.association, "members.Register", {
            "id": p.account, "name": p.account, "roles": ["consumer"], "public_key": p.public_key}, wait=False)
            for p in people]
        for s in sent:
            await client.wait_for(s.tx_hash)
        everyone = await client.query("/members/")  # follows the pages
        assert {f"members/{p.account}" for p in people} <= set(everyone)
        response = (await client.rpc("abci_query", path="/members/?limit=5"))["response"]
        page = json.loads(base64.b64decode(response["value"]))
        assert len(page["items"]) == 5 and page["next"] == list(page["items"])[-1]
        after = urllib.parse.urlencode({"after": page["next"], "limit": 1000})
        rest = json.loads(base64.b64decode((await client.rpc("abci_query", path=f"/members/?{after}"))["response"]["value"]))
        assert rest["next"] is None
        assert list(page["items"]) + list(rest["items"]) == sorted(everyone)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


FLOOD_TXS = 10_000
RSS_BOUND = 150 << 20  # the app's resident memory, flood or not (measured: 65 MiB before, 67 MiB peak)


async def test_a_flood_of_distinct_invalid_max_size_txs_keeps_memory_bounded_and_valid_txs_committing(
        hostile_chain, provider):
    """Each junk tx is canonical, near the size limit and signed by a registered signer with a
    wrong key: it costs the app a full decode and a signature check, and no cache keeps it."""
    pid = hostile_chain.consensus.process.popen.pid
    rss_before = _rss_bytes(pid)
    impostor = Identity(provider.account, Identity.generate("impostor").signing_key)
    template = Tx.build(impostor, hostile_chain.chain_id, "members.RotateKey", 10**9, {"public_key": ""})
    filler = MAX_TX_BYTES - len(template.encode()) - 32

    def junk(i: int) -> bytes:
        return Tx.build(impostor, hostile_chain.chain_id, "members.RotateKey", 10**9,
                        {"public_key": f"{i:08d}" + "k" * filler}).encode()

    peak, codes, committed = rss_before, {}, []
    async with ChainClient(hostile_chain.rpc_url, hostile_chain.chain_id, timeout=30) as client:
        async def flood(lane: int, lanes: int) -> None:
            for i in range(lane, FLOOD_TXS, lanes):
                raw = junk(i)
                assert len(raw) <= MAX_TX_BYTES
                code = (await client.broadcast(raw))["code"]
                codes[code] = codes.get(code, 0) + 1

        async def valid_meanwhile() -> None:
            while len(codes) == 0 or sum(codes.values()) < FLOOD_TXS:
                who = Identity.generate(f"during-flood-{len(committed)}")
                c = await client.submit(hostile_chain.association, "members.Register", {
                    "id": who.account, "name": "x", "roles": ["consumer"], "public_key": who.public_key}, timeout=30)
                committed.append(c.height)
                await asyncio.sleep(0.5)

        async def watch_memory() -> None:
            nonlocal peak
            while sum(codes.values()) < FLOOD_TXS:
                peak = max(peak, _rss_bytes(pid))
                await asyncio.sleep(0.2)

        started = time.monotonic()
        await asyncio.gather(*(flood(lane, 4) for lane in range(4)), valid_meanwhile(), watch_memory())
        elapsed = time.monotonic() - started
        print(f"flood: {FLOOD_TXS} txs of ~{MAX_TX_BYTES} bytes in {elapsed:.1f} s; codes {codes}; "
              f"app RSS {rss_before >> 20} MiB before, peak {peak >> 20} MiB; {len(committed)} valid txs "
              f"committed meanwhile at heights {committed[0]}..{committed[-1]}")
        assert codes == {Code.BAD_SIGNATURE: FLOOD_TXS}
        assert peak < RSS_BOUND, peak
        assert len(committed) >= 3 and committed == sorted(committed)
        await _still_committing(client, hostile_chain.association, "after-flood")
