"""What billing consumes: the chain topic, through the idempotent consumer, applying only the events
the ledger acts on (``ledger.APPLIED_TYPES``).

A settlement emits 8 chain events and the ledger acts on 3 of them (``JobAuthorized``,
``EscrowHeld``, ``JobSettled``). Proving each of the other 5 against the chain and recording its id
in an SQLite transaction of its own was over a third of billing's CPU per settlement, for events
that change nothing. So an event of another type is read and checked as every record is (a record
that is not a valid event of the topic is still a dead letter), then skipped: not proven, not
recorded as applied.

Skipping without recording is what keeps this safe: a forged record of an ignored type that takes
the id of a real event of an applied type is not remembered, so the real event, when it comes, is
proven and applied (recording an unproven id is the squatting that proving exists to stop,
services/common/chainevents.py). And a real event of an ignored type that is read twice changes
nothing either time.
"""

from __future__ import annotations

from services.billing import ledger
from services.common.events import Event
from services.common.kafka import IdempotentConsumer


def applies(event: Event) -> bool:
    return event.type in ledger.APPLIED_TYPES


class LedgerConsumer(IdempotentConsumer):
    """The idempotent consumer of ``rdx.chain.events.v1`` for ``ledger.apply``: events of the types
    it acts on are proven (``verifier``) and applied once; the others are skipped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, handler=ledger.apply, verify_if=applies, **kwargs)
        ledger.init(self.conn)

    async def _apply_once(self, event: Event, topic: str) -> None:
        if applies(event):
            await super()._apply_once(event, topic)
