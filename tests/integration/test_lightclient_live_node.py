"""The light client (services/common/lightclient.py) against a real CometBFT node: its headers,
commits and validator sets verify (adjacent and skipping), a query answer is proven against a
verified header's app hash, and tampered copies are refused. The unit tests check the same code
against blocks recorded from a real 4-validator testnet (tests/unit/common/record_lightclient_vectors.py)."""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
from datetime import datetime, timedelta, timezone

import pytest

from services.common import lightclient, proofs
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.lightclient import LightClientError


async def fetch(client: ChainClient, height: int) -> tuple[dict, dict]:
    for _ in range(100):
        latest = int((await client.rpc("status"))["sync_info"]["latest_block_height"])
        if latest >= height:
            return (await client.rpc("commit", height=str(height)),
                    await client.rpc("validators", height=str(height), per_page="100"))
        await asyncio.sleep(0.1)
    raise AssertionError(f"height {height} never came")


async def test_real_headers_verify_and_prove_a_query_and_tampered_ones_do_not(chain):
    member = Identity.generate(f"light-{secrets.token_hex(3)}")
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        committed = await client.submit(chain.association, "members.Register", {
            "id": member.account, "name": "Light Co", "roles": ["consumer"], "public_key": member.public_key})
        h = committed.height
        raw = {height: await fetch(client, height) for height in (h, h + 1, h + 6)}
        key = f"accounts/{member.account}"
        answer = await client.rpc("abci_query", path=f"/{key}", prove=True)
        answered = int(answer["response"]["height"])
        raw[answered + 1] = await fetch(client, answered + 1)
    blocks = {height: lightclient.light_block(*pair) for height, pair in raw.items()}
    now = datetime.now(timezone.utc)
    trusted = blocks[h]
    lightclient.verify_signed_header(trusted, chain.chain_id)
    lightclient.verify(trusted, blocks[h + 1], now=now, trusting_period_s=3600)  # adjacent
    lightclient.verify(trusted, blocks[h + 6], now=now, trusting_period_s=3600)  # skipping
    if answered + 1 > h:
        lightclient.verify(trusted, blocks[answered + 1], now=now, trusting_period_s=3600)
    value = lightclient.verify_query(blocks[answered + 1], key, answer)
    assert json.loads(value)["public_key"] == member.public_key
    with pytest.raises(proofs.ProofError):  # the right answer against another header
        lightclient.verify_query(blocks[h + 6] if answered + 1 != h + 6 else blocks[h], key, answer)

    def tampered(height: int, edit) -> lightclient.LightBlock:
        commit, validators = copy.deepcopy(raw[height])
        edit(commit["signed_header"], validators)
        return lightclient.light_block(commit, validators)

    def app_hash(s, v):
        s["header"]["app_hash"] = "00" * 32

    def signature(s, v):
        sig = s["commit"]["signatures"][0]
        sig["signature"] = sig["signature"][:-4] + ("AAA=" if not sig["signature"].endswith("AAA=") else "BBB=")

    def validator_set(s, v):
        other = Identity.generate("other")
        import base64
        import hashlib
        pub = base64.b64decode(other.public_key)
        v["validators"][0]["pub_key"]["value"] = other.public_key
        v["validators"][0]["address"] = hashlib.sha256(pub).hexdigest()[:40].upper()

    def unsigned(s, v):
        for sig in s["commit"]["signatures"]:
            sig["block_id_flag"] = 1

    for edit in (app_hash, signature, validator_set, unsigned):
        with pytest.raises(LightClientError):
            lightclient.verify(trusted, tampered(h + 1, edit), now=now, trusting_period_s=3600)
    with pytest.raises(LightClientError, match="trusting period"):
        lightclient.verify(trusted, blocks[h + 1], now=now + timedelta(hours=2), trusting_period_s=3600)
    with pytest.raises(LightClientError, match="future"):
        lightclient.verify(trusted, blocks[h + 1], now=now - timedelta(hours=1), trusting_period_s=86400)
    with pytest.raises(LightClientError, match="not after"):
        lightclient.verify(blocks[h + 1], trusted, now=now, trusting_period_s=3600)
