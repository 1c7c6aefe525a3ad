"""ChainEventVerifier's proven path against a scripted node (the real node is in
tests/integration/test_byzantine_rpc.py): an event of the block just committed is proven only
once the next header exists, so the verifier waits for it rather than calling the event forged."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from services.common.chainevents import ChainEventVerifier, NotOnChain, digest_of
from services.common.events import Event

pytestmark = pytest.mark.unit

HEIGHT = 40


class Node:
    """A chain at HEIGHT that makes a block every 0.3 s; proofs are of the state before its latest
    block (what VerifiedChain asks for)."""

    def __init__(self, event: Event):
        self.t0, self.event = time.monotonic(), event

    def latest(self) -> int:
        return HEIGHT + int((time.monotonic() - self.t0) / 0.3)

    async def height(self) -> int:  # the ChainClient call the verifier waits with
        return self.latest()

    async def query_bytes(self, key: str):  # the VerifiedChain call
        at = self.latest() - 1
        if key == "chain/state_tree":
            return b'{"events_since":1}', at
        if key == f"events/{HEIGHT:012d}" and at >= HEIGHT:
            e = self.event
            return f'{{"{e.id}":["{e.type}","{e.entity}","{digest_of(e)}"]}}'.encode(), at
        return None, at


def _event(**data) -> Event:
    return Event(id=f"{HEIGHT}/0/0", type="CreditsDeposited", entity="member:bank", source="consensus",
                 occurred_at=datetime.fromtimestamp(1_700_000_000, timezone.utc), data={"height": HEIGHT, **data})


async def test_an_event_of_the_latest_block_waits_for_the_header_that_proves_it():
    real = _event(amount=5)
    node = Node(real)
    await ChainEventVerifier(node, reader=node).verify(real)
    assert node.latest() >= HEIGHT + 1


async def test_a_forged_event_of_the_latest_block_is_refused_once_provable():
    node = Node(_event(amount=5))
    with pytest.raises(NotOnChain):
        await ChainEventVerifier(node, reader=node).verify(_event(amount=5_000_000))
