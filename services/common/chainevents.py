"""Only the chain speaks for the chain: a chain event read from Kafka is applied only if the
chain's own record of its block says the same.

Every validator's relay publishes the chain's events to ``rdx.chain.events.v1``; one faulty or
hostile validator (or anyone who can write to the topic) could publish an event that never
happened (a deposit, a kill switch) or squat an id the chain will use later, so that the real
event is dropped as a duplicate. So the app puts, in each ABCI event of a block (tx events and
FinalizeBlock's own), the event's ``id`` and a ``digest``: SHA-256 over the canonical JSON of
what a consumer receives (id, type, entity, block time and data). A consumer asks its own chain
node for that block's results (CometBFT's ``block_results``, one call per height, cached) and
applies the event only if an event with that id, type, entity and digest is there. An event of a
height the node has not committed is waited for, briefly (3 s: another validator's relay may be
a block or two ahead of this node; the copy this node's own validator's relay publishes comes
after its commit), then refused, and further records of that height are refused without waiting; one further ahead is refused at once, so forged
far-future records cannot stall a consumer. A refused event is not recorded as applied, so the real
event with the same id still applies when it comes.

Blocks committed before the app put digests in their events (a chain started with an older
rdx) name each event's id, type and entity only; for those, an event is checked on those three,
not on its data. Blocks before that (no ids) hold nothing to check against, and their events are
refused: replaying such a chain's topic into a new read model needs the chain restarted.

What this trusts is the consumer's own node (``RDX_COMETBFT_RPC``), not the relay that wrote the
record, unless the service holds a trust anchor (``RDX_TRUSTED_GENESIS`` or
``RDX_TRUSTED_HEADER``, services/common/verified.py): then it trusts no node. The app also commits
each block's events in state (``events/<height>``: id -> [type, entity, digest]), and the
verifier reads that record with a proof against a header the validators signed, instead of
``block_results`` (which no header covers). A node that lies or cannot prove its answer makes
the event wait (ChainUnavailable), never applies it. Heights before the chain's state-tree record
names ``events_since`` (a chain started by an older rdx) are checked on ``block_results`` as
above.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from typing import Any

from services.common import canonicaljson
from services.common.chain import ChainClient, ChainError, HeightNotMade
from services.common.events import Event

log = logging.getLogger("rdx.chainevents")

ID_ATTRIBUTE, ENTITY_ATTRIBUTE, DIGEST_ATTRIBUTE = "id", "entity", "digest"
STATE_TREE_KEY = "chain/state_tree"  # the app's record of its state tree's rules (services/consensus/app.py)


def events_key(height: int) -> str:
    """The state key of a block's event record (the app writes it, a consumer proves it)."""
    return f"events/{height:012d}"

FROM_ENV = object()  # ChainEventVerifier's default reader: the environment's trust anchor, if any


def digest(event_id: str, type_: str, entity: str, time_s: int, data: dict[str, Any]) -> str:
    """What the chain attests about an event, as a consumer will see it (the relay adds the
    block ``height`` to ``data``)."""
    doc = {"id": event_id, "type": type_, "entity": entity, "time": time_s, "data": data}
    return hashlib.sha256(canonicaljson.dump_bytes(doc)).hexdigest()


def digest_of(event: Event) -> str:
    return digest(event.id, event.type, event.entity, int(event.occurred_at.timestamp()), event.data)


class NotOnChain(Exception):
    """The chain's record of the block does not hold this event (or not as it reads)."""


class ChainUnavailable(Exception):
    """The consumer's own chain node did not answer: nothing can be said about the event yet."""


class ChainEventVerifier:
    """Checks chain events against ``block_results`` of one trusted node (see the module docstring)."""

    MAX_AHEAD = 2  # heights past this node's that another validator's relay may plausibly be at

    def __init__(self, client: ChainClient, *, reader: Any = FROM_ENV, wait_for_height_s: float = 3.0,
                 cache_heights: int = 64):
        """``reader``: a ``VerifiedChain`` to prove each block's events with; by default the one the
        service's environment anchors (none: ``block_results`` of ``client``'s node is believed)."""
        if reader is FROM_ENV:
            from services.common import verified  # needs the generated CometBFT protobuf modules

            reader = verified.from_env(client)
        self.client, self.reader = client, reader
        self._events_since: int | None = None  # from the chain's state-tree record, once proven
        self.wait_for_height_s = wait_for_height_s
        self._not_committed: dict[int, float] = {}  # heights waited for in vain, until when not to wait again
        self._blocks: OrderedDict[int, dict[str, tuple[str, str, str | None]]] = OrderedDict()
        self._cache = cache_heights

    async def verify(self, event: Event) -> None:
        """Returns if the chain holds ``event`` as it reads; raises NotOnChain or ChainUnavailable."""
        try:
            height, _, _ = (int(part) for part in event.id.split("/"))
        except ValueError:
            raise NotOnChain(f"event id {event.id[:40]!r} is not <height>/<tx>/<index>") from None
        if event.data.get("height") != height:
            raise NotOnChain(f"event {event.id} says height {str(event.data.get('height'))[:20]}")
        recorded = (await self._block(height)).get(event.id)
        if recorded is None:
            raise NotOnChain(f"block {height} holds no event {event.id}")
        kept_digest = recorded[2] if recorded[2] is not None else digest_of(event)  # a block from before digests
        if recorded != (event.type, event.entity, kept_digest) or kept_digest != digest_of(event):
            raise NotOnChain(f"event {event.id} differs from the one block {height} holds ({recorded[0]})")

    async def _block(self, height: int) -> dict[str, tuple[str, str, str | None]]:
        if height in self._blocks:
            self._blocks.move_to_end(height)
            return self._blocks[height]
        if self.reader is not None and height >= await self._proven_since():
            block = await self._proven_block(height)
        else:
            block = await self._results_block(height)
        self._blocks[height] = block
        if len(self._blocks) > self._cache:
            self._blocks.popitem(last=False)
        return block

    async def _proven_since(self) -> int:
        """The first height whose events the chain commits in state (proven; a chain without the
        rule: never)."""
        if self._events_since is None:
            record, _ = await self._prove(STATE_TREE_KEY)
            since = record.get("events_since") if isinstance(record, dict) else None
            self._events_since = since if isinstance(since, int) and since >= 0 else 2**63
        return self._events_since

    async def _prove(self, key: str) -> tuple[Any, int]:
        """The state value of ``key`` (None: proven absent) and the height it is proven at."""
        from services.common.verified import VerificationError

        try:
            value, at = await self.reader.query_bytes(key)
            return (None if value is None else json.loads(value)), at
        except (VerificationError, ChainError, ValueError) as exc:  # lied, unproven or away: not yet
            raise ChainUnavailable(f"{key} cannot be proven: {exc}") from None

    async def _proven_block(self, height: int) -> dict[str, tuple[str, str, str | None]]:
        key = events_key(height)
        record, at = await self._prove(key)
        if record is None and at < height:  # proven at an earlier height: wait, briefly, for the
            await self._wait_for(height + 1)  # header after this one, which proves the state after it
            record, at = await self._prove(key)
            if record is None and at < height:
                raise NotOnChain(f"height {height} is not committed (proven up to {at})")
        if record is None:
            return {}  # proven: the block holds no events
        try:
            return {str(i): (str(t), str(e), str(d)) for i, (t, e, d) in record.items()}
        except (AttributeError, TypeError, ValueError):  # proven, so the chain wrote it: never expected
            raise NotOnChain(f"the chain's event record of height {height} has an unknown shape") from None

    async def _results_block(self, height: int) -> dict[str, tuple[str, str, str | None]]:
        try:  # a committed block's results at once: the kill switch waits on this call
            results = await self.client.rpc("block_results", height=str(height))
        except HeightNotMade:
            await self._wait_for(height)  # a relay a block ahead of this node: wait for it, briefly
            try:
                results = await self.client.rpc("block_results", height=str(height))
            except ChainError as again:
                raise ChainUnavailable(str(again)) from None
        except ChainError as exc:
            raise ChainUnavailable(str(exc)) from None
        events: list[dict] = list(results.get("finalize_block_events") or [])
        for tx in results.get("txs_results") or []:
            events += tx.get("events") or []
        block: dict[str, tuple[str, str, str | None]] = {}
        for e in events:
            attrs = {a.get("key"): a.get("value") for a in e.get("attributes") or []}
            if ID_ATTRIBUTE in attrs:
                block[attrs[ID_ATTRIBUTE]] = (e.get("type"), attrs.get(ENTITY_ATTRIBUTE), attrs.get(DIGEST_ATTRIBUTE))
        return block

    async def _wait_for(self, height: int) -> None:
        """Until this node has committed ``height``, briefly. A height already waited for in vain is
        not waited for again (a run of records for it costs one wait, not one each)."""
        now = time.monotonic()
        self._not_committed = {h: t for h, t in self._not_committed.items() if t > now}
        deadline = now if height in self._not_committed else now + self.wait_for_height_s
        # The header a fresh event needs usually comes one block later (`rdx up`: a round of votes
        # after the event's block, 100 ms when a validator is late), so look soon, then less often: a flat 0.2 s made every job's authorising
        # event, and so its start on each node, wait ~0.1 s longer than the block did.
        pause = 0.025
        while True:
            try:
                latest = await self.client.height()
            except (ChainError, KeyError, ValueError) as exc:
                raise ChainUnavailable(str(exc)) from None
            if latest >= height:
                return
            if height > latest + self.MAX_AHEAD or time.monotonic() >= deadline:
                self._not_committed[height] = time.monotonic() + 10 * self.wait_for_height_s
                raise NotOnChain(f"height {height} is not committed (the chain is at {latest})")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
