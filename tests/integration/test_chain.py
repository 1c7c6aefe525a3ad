"""A signed transaction through the real CometBFT node, answered by rdx's Python ABCI app."""

from __future__ import annotations

import pytest

from services.common.chain import ChainClient, TxRejected
from services.common.identity import Identity
from services.common.tx import Code


async def test_signed_tx_is_committed_and_answered_by_the_abci_app(chain):
    bank = Identity.generate("bank-a")
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        committed = await client.submit(chain.association, "members.Register", {
            "id": "bank-a", "name": "Bank A", "roles": ["provider", "consumer"], "public_key": bank.public_key})
        assert committed.height >= 1
        assert [e["type"] for e in committed.events] == ["MemberRegistered"]
        member = await client.query("/members/bank-a")
        assert member["name"] == "Bank A" and member["status"] == "active"
        assert (await client.query("/accounts/association"))["nonce"] >= 1


async def test_app_hash_and_height_survive_in_abci_info(chain):
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        info = (await client.rpc("abci_info"))["response"]
        assert info["data"] == "rdx"
        assert int(info["last_block_height"]) >= 1
        assert len(info["last_block_app_hash"]) > 0


async def test_non_association_cannot_register_members(chain):
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        intruder = Identity.generate("intruder")
        with pytest.raises(TxRejected) as rejected:
            await client.submit(intruder, "members.Register", {
                "id": "x-corp", "name": "X", "roles": ["consumer"], "public_key": intruder.public_key})
        assert rejected.value.code == Code.UNKNOWN_SIGNER
        assert await client.query("/members/x-corp") is None
