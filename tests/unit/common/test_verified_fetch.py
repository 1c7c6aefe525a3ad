"""How the verified reader fetches a header (services/common/verified.py, ``_fetch``): over the
headers, commits and validator sets recorded from a real 4-validator testnet
(lightclient_testnet_vectors.json), served by a scripted node that counts what it is asked.
Issue 23: a header on a job's path cost ``status``, ``commit`` and ``validators``, 3 round trips;
it costs one ``commit`` when the set is one a trusted header named."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.common import lightclient
from services.common.chain import NOT_MADE, ChainError, HeightNotMade
from services.common.verified import Anchor, VerificationError, VerifiedChain

pytestmark = pytest.mark.unit

VECTORS = json.loads((Path(__file__).with_name("lightclient_testnet_vectors.json")).read_text())
RAW = {int(h): (b["commit"], b["validators"]) for h, b in VECTORS["blocks"].items()}
FIRST = VECTORS["first"]
NEXT = sorted(RAW)[1]  # the recorded block after the first
LAST = lightclient.light_block(*RAW[max(RAW)])
NOW = datetime.fromtimestamp(LAST.time_ns / 1e9, timezone.utc) + timedelta(minutes=1)


class Recorded(VerifiedChain):
    """A node serving the recorded blocks; a height is refused as CometBFT refuses one it has not
    made (``not_made`` times first), and every RPC is counted."""

    def __init__(self, not_made: int = 0, raw=RAW):
        first = lightclient.light_block(*raw[FIRST])
        super().__init__("http://127.0.0.1:9", Anchor(VECTORS["chain_id"], FIRST,
                                                      header_hash=lightclient.header_hash(first.header)),
                         clock=lambda: NOW, wait_s=5.0)
        self.raw, self.not_made, self.calls = raw, not_made, []

    async def _rpc(self, method: str, **params):
        self.calls.append((method, int(params["height"]) if "height" in params else None))
        height = int(params["height"])
        if method == "commit":
            if height != FIRST and self.not_made > 0:
                self.not_made -= 1
                raise HeightNotMade(f"commit: height {height} {NOT_MADE} {height - 1}")
            return copy.deepcopy(self.raw[height][0])
        assert method == "validators", method
        return copy.deepcopy(self.raw[height][1])


async def test_a_header_the_node_has_not_made_yet_is_asked_for_again_without_status_and_the_known_set_is_not_fetched():
    node = Recorded(not_made=2)
    block = await node.header(NEXT)
    await node.close()
    assert block.height == NEXT and len(block.validators) == 4
    # the anchor's set is fetched once; the next header names the same set: its commit alone, asked
    # three times (refused twice as not made yet), and never ``status``
    assert node.calls == [("commit", FIRST), ("validators", FIRST)] + [("commit", NEXT)] * 3


async def test_a_header_naming_a_set_no_trusted_header_named_has_its_set_fetched_and_checked():
    raw = copy.deepcopy(RAW)
    raw[NEXT][0]["signed_header"]["header"]["validators_hash"] = "AB" * 32  # not the set the others name
    node = Recorded(raw=raw)
    with pytest.raises(VerificationError):  # the signatures are over the true header: it does not verify
        await node.header(NEXT)
    await node.close()
    assert ("validators", NEXT) in node.calls


async def test_a_node_that_never_makes_the_height_is_given_up_on_after_wait_s():
    node = Recorded(not_made=10**9)
    node.wait_s = 0.2
    with pytest.raises(VerificationError, match=f"no block {NEXT} within"):
        await node.header(NEXT)
    await node.close()
    assert set(node.calls[2:]) == {("commit", NEXT)} and 4 <= len(node.calls[2:]) <= 20  # paced, not a loop


async def test_any_other_refusal_of_the_commit_is_the_node_s_error_at_once():
    class Away(Recorded):
        async def _rpc(self, method: str, **params):
            if method == "commit" and int(params["height"]) != FIRST:
                self.calls.append((method, int(params["height"])))
                raise ChainError("commit: the node is shutting down")
            return await super()._rpc(method, **params)

    node = Away()
    with pytest.raises(ChainError, match="shutting down"):
        await node.header(NEXT)
    await node.close()
    assert node.calls.count(("commit", NEXT)) == 1
