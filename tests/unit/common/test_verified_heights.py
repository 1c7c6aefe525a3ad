"""Which height the verified reader asks a state key at (services/common/verified.py,
``query_bytes``), answer by answer: a node's answers are scripted here, the proof checks after the
choice are not reached. The live race (a ``status`` one block behind the app) is
tests/integration/test_byzantine_rpc.py's ``test_a_read_racing_a_block_…``."""

from __future__ import annotations

import pytest

from services.common.proofs import CHANGED_SINCE
from services.common.tx import Code
from services.common.verified import Anchor, VerificationError, VerifiedChain

pytestmark = pytest.mark.unit


class Proving(Exception):
    """The reader chose its answer and asked for the header that proves it."""


class Scripted(VerifiedChain):
    """A node whose ``status`` says ``latest`` and whose app answers ``abci_query`` with ``answer(height)``
    (``height`` None: the app's latest)."""

    def __init__(self, latest: int, answer):
        super().__init__("http://127.0.0.1:9", Anchor("rdx-test", 1, header_hash=bytes(32)))
        self.status, self.answer, self.asked, self.statuses = latest, answer, [], 0

    async def _rpc(self, method: str, **params):
        if method == "status":
            self.statuses += 1
            return {"sync_info": {"latest_block_height": str(self.status)}}
        assert method == "abci_query" and params["prove"] is True
        height = params.get("height")
        self.asked.append(None if height is None else int(height))
        return {"response": self.answer(self.asked[-1])}

    async def header(self, height: int):
        raise Proving(height)


def app(now: int, changed: set[int] = frozenset(), restarted: bool = False):
    """An honest app at height ``now`` (services/consensus/app.py ``query``): it proves its latest
    height and the one before; the key changed in the blocks ``changed``."""

    def answer(height: int | None) -> dict:
        hint = f"{CHANGED_SINCE}{now}" if now in changed else ""  # at any height it proves, as the app says it
        if height in (None, 0, now):
            return {"code": Code.OK, "height": str(now), "value": "", "info": hint}
        if height == now - 1 and not restarted:
            return {"code": Code.OK, "height": str(height), "value": "", "info": hint}
        return {"code": Code.INVALID_QUERY, "height": str(now), "log": "proofs are given at the latest height"}

    return answer


async def proven_by(reader: Scripted) -> int:
    with pytest.raises(Proving) as proving:
        await reader.query_bytes("bank/balance/alice")
    await reader.close()
    return proving.value.args[0]


@pytest.mark.parametrize("latest, answer, asked, header", [
    # The usual read: the height before the node's latest, proven by the latest header.
    (10, app(10), [9], 10),
    # The key changed in the app's latest block: asked at that block, proven by the next header
    # (CometBFT makes it at once: the block changed the app hash). The answer there says the key
    # changed at that very height: it is kept, not asked for again at the app's latest.
    (10, app(10, changed={10}), [9, 10], 11),
    # The app committed a block after ``status`` answered: asked at the height before the app's,
    # whose header exists (not the app's latest, whose header may come a second later).
    (10, app(11), [9, 10], 11),
    (10, app(12), [9, 11], 12),
    # ... and that block changed the key: asked at it.
    (10, app(11, changed={11}), [9, 10, 11], 12),
    # A restarted app proves its latest height only: nowhere better to ask than its latest.
    (10, app(10, restarted=True), [9, None], 11),
])
async def test_the_height_a_read_is_asked_at(latest, answer, asked, header):
    reader = Scripted(latest, answer)
    assert await proven_by(reader) == header
    assert reader.asked == asked


async def test_a_node_that_keeps_sending_the_read_on_is_asked_for_its_latest_after_three_asks():
    def answer(height: int | None) -> dict:
        if height is None:
            return {"code": Code.OK, "height": "50", "value": "", "info": ""}
        return {"code": Code.OK, "height": str(height), "value": "", "info": f"{CHANGED_SINCE}{height + 1}"}

    reader = Scripted(10, answer)
    assert await proven_by(reader) == 51
    assert reader.asked == [9, 10, 11, None]


@pytest.mark.parametrize("info", [f"{CHANGED_SINCE}9", f"{CHANGED_SINCE}-4", f"{CHANGED_SINCE}0"])
async def test_a_hint_that_points_back_is_not_followed_and_the_answer_is_kept(info):
    """The answer is of the height asked, at or after the change the hint names: proven there, by
    the header after it, as any answer (the floor and the age limit still apply)."""
    reader = Scripted(10, lambda h: {"code": Code.OK, "height": "10" if h is None else str(h), "value": "", "info": info})
    assert await proven_by(reader) == 10
    assert reader.asked == [9]


@pytest.mark.parametrize("response", [
    {"code": Code.OK, "height": "9", "info": f"{CHANGED_SINCE}ten"},
    {"code": Code.OK, "height": "nine"},
    {"code": Code.INVALID_QUERY, "height": None},
    "not a response",
])
async def test_an_answer_of_the_wrong_shape_is_refused(response):
    reader = Scripted(10, lambda h: response)
    with pytest.raises(VerificationError, match="not an abci_query answer"):
        await reader.query_bytes("bank/balance/alice")
    await reader.close()


class Header:
    def __init__(self, height: int):
        self.height = height


@pytest.mark.parametrize("node_at, asked", [
    (10, [9]),  # the node is where the newest header said: asked there, no status
    (12, [9, 11]),  # it moved on: its refusal says its height, and the read goes there
])
async def test_a_header_verified_within_guess_s_names_the_height_to_ask_at_without_a_status(node_at, asked):
    """Issue 23: under a job's start each read's ``status`` took 3-22 ms. A header verified less than
    GUESS_S ago stands in for it; an older one does not."""
    import time

    reader = Scripted(node_at, app(node_at))
    reader._trusted, reader._latest_at = {10: Header(10)}, time.monotonic()
    assert await proven_by(reader) == asked[-1] + 1
    assert reader.asked == asked and reader.statuses == 0
    stale = Scripted(node_at, app(node_at))
    stale._trusted, stale._latest_at = {10: Header(10)}, time.monotonic() - 5
    await proven_by(stale)
    assert stale.statuses == 1 and stale.asked == [node_at - 1]
