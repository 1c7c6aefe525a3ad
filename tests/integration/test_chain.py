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


async def test_a_client_whose_nonce_count_went_stale_reads_the_chain_s_and_commits(chain):
    """Two processes signing with one key (a member's CLI beside its gateway client), or a tx that a
    mempool recheck evicted, leave a client counting a nonce the chain has moved past or never
    reached. Its next tx is signed again with the chain's nonce rather than refused (before, a
    compute node's policy abort refused so was taken for a job already ended)."""
    ids = [Identity.generate(f"stale-{i}") for i in range(3)]
    async with ChainClient(chain.rpc_url, chain.chain_id) as a, ChainClient(chain.rpc_url, chain.chain_id) as b:
        def register(i: int) -> dict:
            return {"id": f"stale-{i}", "name": f"Stale {i}", "roles": ["consumer"], "public_key": ids[i].public_key}

        await a.submit(chain.association, "members.Register", register(0))
        await b.submit(chain.association, "members.Register", register(1))  # the chain's nonce moves past a's count
        committed = await a.submit(chain.association, "members.Register", register(2))
        assert [e["type"] for e in committed.events] == ["MemberRegistered"]
        assert (await a.query("/members/stale-2"))["status"] == "active"
        # a count ahead of the chain (the evicted tx's case) is read again too
        a._nonces[chain.association.account] += 5
        await a.submit(chain.association, "members.Suspend", {"member": "stale-2", "reason": "test"})
        assert (await a.query("/members/stale-2"))["status"] == "suspended"
