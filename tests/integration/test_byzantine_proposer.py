"""A byzantine proposer on a real 4-validator network: one validator (tests/faults/
byzantine_proposer.py) adds a tx of every hostile class to each block it proposes. The three
honest validators reject those proposals in ProcessProposal; the chain keeps committing, no
committed block holds such a tx, every validator has the same app hash, and each honest
validator counted and logged the rejections (without the txs' bytes).
"""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.request

import pytest

from rdx.testnet import Testnet
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.tx import Code

CHAIN_ID = "rdx-byzantine-test"
BYZANTINE = 3
# Result codes of txs that failed authentication: none may be in a committed block.
INADMISSIBLE = {Code.UNDECODABLE, Code.OVERSIZE, Code.WRONG_CHAIN, Code.UNKNOWN_SIGNER, Code.SUSPENDED_SIGNER,
                Code.BAD_SIGNATURE, Code.BAD_NONCE, Code.UNKNOWN_TYPE, Code.INVALID_PAYLOAD}


@pytest.fixture(scope="module")
def network(toolchain, kafka, tmp_path_factory) -> Testnet:
    net = Testnet(tmp_path_factory.mktemp("byzantine"), kafka.bootstrap, validators=4, chain_id=CHAIN_ID,
                  association=Identity.generate("association"), timeout_commit="200ms", toolchain=toolchain)
    net.validators[BYZANTINE].app.module = "tests.faults.byzantine_proposer"
    try:
        net.start()
        yield net
    finally:
        net.stop()


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


async def test_proposals_with_hostile_txs_are_rejected_and_the_chain_keeps_committing(network):
    byzantine_address = (await asyncio.to_thread(network.validators[BYZANTINE].node.status))["validator_info"]["address"]
    async with ChainClient(network.rpc_urls[0], CHAIN_ID) as client:
        start = await client.height()
        committed = []
        # Valid txs through an honest validator while the proposer turns go round several times.
        for i in range(16):
            who = Identity.generate(f"honest-{i}")
            c = await client.submit(network.association, "members.Register", {
                "id": who.account, "name": who.account, "roles": ["consumer"], "public_key": who.public_key},
                timeout=30)
            committed.append(c.height)
        top = await client.height()
        await asyncio.to_thread(network.wait_for_height, top)
        assert top - start >= 12, (start, top)

        proposers, codes = set(), []
        for h in range(start + 1, top + 1):
            block = (await client.rpc("block", height=str(h)))["block"]
            proposers.add(block["header"]["proposer_address"])
            results = (await client.rpc("block_results", height=str(h))).get("txs_results") or []
            codes += [r.get("code", 0) for r in results]
            for raw in block["data"]["txs"] or []:
                assert len(base64.b64decode(raw)) < 10_000  # no oversize filler got in
        assert not INADMISSIBLE & set(codes), codes
        assert codes.count(Code.OK) >= 16
        # Its turns came round (with 4 equal validators, every 4th height) but it never made a block.
        assert byzantine_address not in proposers and len(proposers) == 3, proposers

    rejected = [_metric(network.validators[i].app.url, "rdx_proposals_rejected_total") for i in range(4)]
    assert all(r >= 2 for i, r in enumerate(rejected) if i != BYZANTINE), rejected
    for i in range(4):
        if i == BYZANTINE:
            continue
        text = (network.root / f"app{i}" / "logs" / "consensus.log").read_text()
        lines = [line for line in text.splitlines() if "rejected the proposal" in line]
        assert lines, f"validator {i} logged no rejected proposal"
        assert re.search(r"from proposer " + byzantine_address, lines[0]), lines[0]
        assert "kkkkkkkk" not in text and "\\ud800" not in text  # the txs' bytes are not logged

    await asyncio.to_thread(network.wait_for_height, top + 1)
    assert await asyncio.to_thread(network.divergent_heights, 1, top) == []
    assert await asyncio.to_thread(network.app_hash_mismatches) == []
