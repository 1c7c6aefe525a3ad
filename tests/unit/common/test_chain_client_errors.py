"""ChainClient.rpc's errors: CometBFT's refusal of a height it has not made is HeightNotMade (the
verified reader and the chain-event check wait for the block on it, services/common/verified.py and
chainevents.py); any other RPC error, a hostile node's included, is a plain ChainError."""

from __future__ import annotations

import httpx
import pytest

from services.common.chain import ChainClient, ChainError, HeightNotMade

pytestmark = pytest.mark.unit


def answering(error: dict) -> ChainClient:
    client = ChainClient("http://127.0.0.1:9", "rdx-test")
    client._http = httpx.AsyncClient(base_url=client.rpc_url, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "error": error})))
    return client


async def test_a_height_the_node_has_not_made_is_height_not_made():
    client = answering({"code": -32603, "message": "Internal error",
                        "data": "height 30 must be less than or equal to the current blockchain height 29"})
    with pytest.raises(HeightNotMade, match="commit: height 30"):
        await client.rpc("commit", height="30")
    await client.close()


@pytest.mark.parametrize("error", [
    {"code": -32603, "message": "Internal error", "data": "height 0 must be greater than 0"},
    {"code": -32603, "message": "Internal error", "data": "could not find results for height #5"},
    {"code": -32600, "message": "Invalid Request"},
])
async def test_any_other_error_is_a_plain_chain_error(error):
    client = answering(error)
    with pytest.raises(ChainError) as raised:
        await client.rpc("commit", height="5")
    assert type(raised.value) is ChainError
    await client.close()
