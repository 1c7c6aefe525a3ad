"""What billing consumes: the chain topic, through the idempotent consumer, applying only the events
the ledger acts on (``ledger.APPLIED_TYPES``).

A settlement emits 8 chain events and the ledger acts on 3 of them (``JobAuthorized``,
``EscrowHeld``, ``JobSettled``). Proving each of the other 5 against the chain and recording its id
in an SQLite transaction of its own was over a third of billing's CPU per settlement, for events
that change nothing. So an event of another type is skipped: not proven, not recorded as applied.

A record whose ``rdx-event-type`` header (the relay sets it to the event's type) names a chain event
type the ledger does not act on is skipped before its value is even parsed (parsing was most of
what such an event still cost then). Any other record is parsed and checked as before: one that is
not a valid event of the topic is a dead letter, and a valid one of a type the ledger does not act
on is skipped once parsed. What the header says is never applied (a record is applied only as
its parsed, proven value reads), so a header that lies can only make billing skip a record it
would not have applied: one whose value is a real event of an applied type is skipped here, and
the relay's own record of that event, which carries the true header, is applied. A record without
the header, or naming an applied or unknown type, is parsed and checked as every record is.

Skipping without recording is what keeps this safe: a forged record of an ignored type that takes
the id of a real event of an applied type is not remembered, so the real event, when it comes, is
proven and applied (recording an unproven id is the squatting that proving exists to stop,
services/common/chainevents.py). And a real event of an ignored type that is read twice changes
nothing either time.
"""

from __future__ import annotations

from services.billing import ledger
from services.common.events import CHAIN_EVENTS, EVENT_TYPES, Event
from services.common.kafka import IdempotentConsumer, last_header

TYPE_HEADER = "rdx-event-type"
SKIPPED_HEADERS = frozenset(t.encode() for t in EVENT_TYPES[CHAIN_EVENTS] - ledger.APPLIED_TYPES)


def applies(event: Event) -> bool:
    return event.type in ledger.APPLIED_TYPES


class LedgerConsumer(IdempotentConsumer):
    """The idempotent consumer of ``rdx.chain.events.v1`` for ``ledger.apply``: events of the types
    it acts on are proven (``verifier``) and applied once; the others are skipped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, handler=ledger.apply, verify_if=applies, batch_transactions=True, **kwargs)
        ledger.init(self.conn)

    async def _apply(self, message) -> None:
        if message.topic == CHAIN_EVENTS and last_header(message.headers, TYPE_HEADER) in SKIPPED_HEADERS:
            return
        await super()._apply(message)

    async def _apply_once(self, event: Event, topic: str) -> None:
        if applies(event):
            await super()._apply_once(event, topic)
