"""The consensus service's signature helper on a real node: a burst of txs through CometBFT's RPC
is verified by the helper process (the service's own counters say so), every honest tx commits,
and a badly signed one inside the burst is refused all the same."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.tx import Tx

SENDERS, PER_SENDER = 4, 100


def scrape(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with ``labels`` in a /metrics text; 0 if it is not there (yet)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_a_burst_is_verified_by_the_helper_and_a_forged_tx_inside_it_is_still_refused(chain):
    members = [Identity.generate(f"burst-{i}") for i in range(SENDERS)]
    async with ChainClient(chain.rpc_url, chain.chain_id) as client, httpx.AsyncClient(timeout=30) as http:
        for m in members:
            await client.submit(chain.association, "members.Register", {
                "id": m.account, "name": m.account, "roles": ["consumer"], "public_key": m.public_key})
        before = (await http.get(f"{chain.consensus.url}/metrics")).text

        def rotate(m: Identity, nonce: int) -> bytes:
            return Tx.build(m, chain.chain_id, "members.RotateKey", nonce, {"public_key": m.public_key}).encode()

        streams = [[rotate(m, n) for n in range(1, PER_SENDER + 1)] for m in members]
        # A thief's key for the first member, "signed" with zeros, just before that member's real
        # tx of the same nonce: refused for its signature, and the real one still commits.
        forged = json.loads(Tx.build(members[0], chain.chain_id, "members.RotateKey", PER_SENDER // 2,
                                     {"public_key": Identity.generate("thief").public_key}).encode())
        forged["sig"] = base64.b64encode(bytes(64)).decode()
        streams[0].insert(PER_SENDER // 2 - 1, json.dumps(forged, separators=(",", ":"), sort_keys=True).encode())

        async def send(stream: list[bytes]) -> None:
            """One member's txs in order, as JSON-RPC batches of 10 (the node's limit): each
            batch's CheckTx reach the app together, and the senders' batches interleave."""
            for at in range(0, len(stream), 10):
                calls = [{"jsonrpc": "2.0", "id": i, "method": "broadcast_tx_async",
                          "params": {"tx": base64.b64encode(raw).decode()}}
                         for i, raw in enumerate(stream[at:at + 10])]
                answer = await http.post(chain.rpc_url, json=calls)
                answers = answer.json()
                answers = answers if isinstance(answers, list) else [answers]  # a batch of one: one object
                assert answer.status_code == 200 and all("result" in a for a in answers), answer.text[:300]

        await asyncio.gather(*(send(s) for s in streams))
        for _ in range(120):
            nonces = [(await client.query(f"/accounts/{m.account}"))["nonce"] for m in members]
            if nonces == [PER_SENDER] * SENDERS:
                break
            await asyncio.sleep(0.5)
        assert nonces == [PER_SENDER] * SENDERS
        assert (await client.query(f"/accounts/{members[0].account}"))["public_key"] == members[0].public_key
        after = (await http.get(f"{chain.consensus.url}/metrics")).text
    assert scrape(after, "rdx_consensus_signature_helper_up") == 1  # never stopped
    by_helper = (scrape(after, "rdx_consensus_signatures_verified_total", by="helper")
                 - scrape(before, "rdx_consensus_signatures_verified_total", by="helper"))
    assert by_helper > 0, "no signature of the burst went to the helper"
    refused = (scrape(after, "rdx_tx_refused_total", stage="check", reason="bad_signature")
               - scrape(before, "rdx_tx_refused_total", stage="check", reason="bad_signature"))
    assert refused == 1
