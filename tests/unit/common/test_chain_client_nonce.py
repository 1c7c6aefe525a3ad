"""ChainClient.submit against a node whose CheckTx answers are scripted: a stale nonce count is
signed once more with the chain's nonce, and a node that answers bad nonce every time gets exactly
one more tx, then the refusal (no loop, and the count is read again next time)."""

from __future__ import annotations

import base64
import json

import pytest

from services.common.chain import ChainClient, TxRejected
from services.common.identity import Identity
from services.common.tx import Code, Tx

pytestmark = pytest.mark.unit


class Scripted(ChainClient):
    def __init__(self, chain_nonce: int, refuse_always: bool = False):
        super().__init__("http://127.0.0.1:9", "rdx-test")
        self.chain_nonce, self.refuse_always, self.sent, self.reads = chain_nonce, refuse_always, [], 0

    async def rpc(self, method: str, **params):
        if method == "abci_query":
            self.reads += 1
            value = base64.b64encode(json.dumps({"nonce": self.chain_nonce}).encode()).decode()
            return {"response": {"code": 0, "value": value}}
        assert method == "broadcast_tx_sync"
        nonce = Tx.decode_signed(base64.b64decode(params["tx"]))[0].nonce
        self.sent.append(nonce)
        ok = not self.refuse_always and nonce == self.chain_nonce + 1
        return {"code": Code.OK if ok else Code.BAD_NONCE, "log": "" if ok else "bad nonce", "hash": ""}


async def test_a_stale_count_is_signed_once_more_with_the_chain_s_nonce():
    who = Identity.generate("bank-a")
    client = Scripted(chain_nonce=4)
    client._nonces[who.account] = 9  # counted past a tx the mempool evicted
    await client.submit(who, "jobs.Abort", {"job": "j", "reason": "r"}, wait=False)
    assert client.sent == [9, 5] and client._nonces[who.account] == 6
    await client.close()


async def test_a_node_that_answers_bad_nonce_every_time_gets_one_more_tx_then_the_refusal():
    who = Identity.generate("bank-a")
    client = Scripted(chain_nonce=4, refuse_always=True)
    client._nonces[who.account] = 9
    with pytest.raises(TxRejected) as refused:
        await client.submit(who, "jobs.Abort", {"job": "j", "reason": "r"}, wait=False)
    assert refused.value.code == Code.BAD_NONCE and client.sent == [9, 5]
    assert who.account not in client._nonces  # read from the chain next time
    client.sent.clear()
    with pytest.raises(TxRejected):  # a count read from the chain is not signed again
        await client.submit(who, "jobs.Abort", {"job": "j", "reason": "r"}, wait=False)
    assert client.sent == [5]
    await client.close()
