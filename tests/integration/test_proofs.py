"""Proofs on query (issue 18) through a real CometBFT node and rdx's app: ``/abci_query?prove=true``
answers a state key's value or its absence with a proof that ``services/common/proofs.py`` checks
against the app hash in the real header of the next height; tampered answers are refused; hostile
paths with prove=true get a code and the node goes on."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets

import httpx
import pytest

from services.common import proofs
from services.common.chain import ChainClient
from services.common.identity import Identity
from services.common.proofs import ProofError
from services.common.tx import Code


async def app_hash_after(client: ChainClient, height: int) -> bytes:
    """The app hash of the state committed at ``height``: in the header of ``height + 1``."""
    for _ in range(100):
        latest = int((await client.rpc("status"))["sync_info"]["latest_block_height"])
        if latest > height:
            header = (await client.rpc("header", height=str(height + 1)))["header"]
            return bytes.fromhex(header["app_hash"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no block after height {height}")


async def proven(client: ChainClient, key: str) -> tuple[dict, bytes]:
    result = await client.rpc("abci_query", path=f"/{key}", prove=True)
    return result, await app_hash_after(client, int(result["response"]["height"]))


async def test_answers_with_prove_are_verified_against_the_next_header(chain):
    member = Identity.generate(f"proof-{secrets.token_hex(3)}")
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        await client.submit(chain.association, "members.Register", {
            "id": member.account, "name": "Proof Co", "roles": ["consumer"], "public_key": member.public_key})
        key = f"members/{member.account}"
        result, app_hash = await proven(client, key)
        value = proofs.verify_rpc_answer(app_hash, key, result)
        assert json.loads(value) == await client.query(f"/{key}")
        account_key = f"accounts/{member.account}"
        account, account_hash = await proven(client, account_key)
        assert json.loads(proofs.verify_rpc_answer(account_hash, account_key, account))["public_key"] == member.public_key
        assert result["response"]["proofOps"]["ops"][0]["type"] == proofs.PROOF_TYPE

        absent_key = f"members/nobody-{secrets.token_hex(4)}"
        absent, absent_hash = await proven(client, absent_key)
        assert absent["response"]["code"] == Code.NOT_FOUND
        assert proofs.verify_rpc_answer(absent_hash, absent_key, absent) is None

        # Tampered copies of the real answers: every one refused.
        response = result["response"]
        other, _ = await proven(client, "accounts/" + chain.association.account)
        tampered = []
        t = copy.deepcopy(result)
        t["response"]["value"] = base64.b64encode(value.replace(b'"active"', b'"suspended"')).decode()
        tampered.append(("a rewritten value", key, t))
        t = copy.deepcopy(result)
        t["response"]["value"] = other["response"]["value"]
        tampered.append(("another key's value", key, t))
        t = copy.deepcopy(result)
        data = bytearray(base64.b64decode(response["proofOps"]["ops"][0]["data"]))
        data[-5] ^= 0x40
        t["response"]["proofOps"]["ops"][0]["data"] = base64.b64encode(bytes(data)).decode()
        tampered.append(("a flipped proof byte", key, t))
        t = copy.deepcopy(result)
        t["response"].update(code=Code.NOT_FOUND, value="")
        tampered.append(("a present key claimed absent", key, t))
        t = copy.deepcopy(absent)
        t["response"].update(code=0, value=response["value"])
        tampered.append(("an absent key claimed present", absent_key, t))
        t = copy.deepcopy(absent)
        tampered.append(("another key's absence proof", key, t))
        t = copy.deepcopy(result)
        t["response"]["proofOps"] = other["response"]["proofOps"]
        tampered.append(("another key's proof", key, t))
        t = copy.deepcopy(result)
        t["response"]["proofOps"] = {"ops": []}
        tampered.append(("no proof", key, t))
        for what, asked, answer in tampered:
            with pytest.raises(ProofError):
                proofs.verify_rpc_answer(app_hash, asked, answer)
                pytest.fail(f"{what} was accepted")
        with pytest.raises(ProofError):  # the right answer against another height's app hash
            proofs.verify_rpc_answer(await app_hash_after(client, 0), key, result)


@pytest.mark.parametrize("params, code", [
    ({"path": "/accounts/"}, Code.INVALID_QUERY),
    ({"path": "/quote/x/1"}, Code.INVALID_QUERY),
    ({"path": "/" + "a" * 600}, Code.INVALID_QUERY),
    ({"path": ""}, Code.INVALID_QUERY),
    ({"path": "/members/association", "height": "1"}, Code.INVALID_QUERY),
    ({"path": "/members/\u0000\u202e\U0001f600"}, Code.NOT_FOUND),
    ({"path": "/accounts/?after=accounts/&limit=9999"}, Code.NOT_FOUND),
])
async def test_hostile_paths_with_prove_get_a_code_and_the_node_goes_on(chain, params, code):
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        result = await client.rpc("abci_query", prove=True, **params)
        response = result["response"]
        assert response.get("code", 0) == code, response
        if code == Code.NOT_FOUND:
            key = params["path"].lstrip("/")
            app_hash = await app_hash_after(client, int(response["height"]))
            assert proofs.verify_rpc_answer(app_hash, key, result) is None
        else:
            assert not response.get("proofOps") and not response.get("value")
        assert int((await client.rpc("abci_info"))["response"]["last_block_height"]) >= 1


async def test_a_path_that_is_not_utf8_with_prove_gets_a_code(chain):
    async with httpx.AsyncClient(base_url=chain.rpc_url, timeout=10) as http:
        body = (await http.get("/abci_query?path=%22%2Fmembers%2F%FF%FE%22&prove=true")).json()
    response = body["result"]["response"]
    async with ChainClient(chain.rpc_url, chain.chain_id) as client:
        if response["code"] == Code.NOT_FOUND:  # the node's URI decoding made it UTF-8: a key that is not there
            key = base64.b64decode(response["key"]).decode()
            assert key.startswith("members/")
            app_hash = await app_hash_after(client, int(response["height"]))
            assert proofs.verify_rpc_answer(app_hash, key, body["result"]) is None
        else:
            assert response["code"] == Code.INVALID_QUERY, body
        assert (await client.query("/members/" + chain.association.account)) is not None
