"""Billing's consumer applies the events the ledger acts on, proven, once; it skips the others
without proving them or recording their ids, so a forged record of an ignored type cannot squat
the id of a real event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from services.billing import ledger
from services.billing.events import LedgerConsumer
from services.common.chainevents import NotOnChain
from services.common.events import CHAIN_EVENTS, EVENT_TYPES, Event

AT = datetime(2026, 12, 1, tzinfo=timezone.utc)


@dataclass
class Message:
    value: bytes
    offset: int = 0
    topic: str = CHAIN_EVENTS
    partition: int = 0
    key: bytes | None = None
    headers: tuple = ()


class Chain:
    """A verifier that holds exactly ``real`` (event id -> the event's bytes), and counts its checks."""

    def __init__(self, *real: Event):
        self.real = {e.id: e.encode() for e in real}
        self.checked: list[str] = []

    async def verify(self, event: Event) -> None:
        self.checked.append(event.id)
        if self.real.get(event.id) != event.encode():
            raise NotOnChain(f"no {event.id}")


def event(id_: str, type_: str, **data) -> Event:
    return Event(id=id_, type=type_, entity="job:j", source="consensus", occurred_at=AT,
                 data={**data, "height": int(id_.split("/")[0])})


def consumer(tmp_path, chain: Chain) -> LedgerConsumer:
    return LedgerConsumer("127.0.0.1:1", "billing", [CHAIN_EVENTS], "g", tmp_path / "ledger.sqlite", verifier=chain)


def applied(c: LedgerConsumer) -> list[str]:
    return [i for (i,) in c.conn.execute("SELECT event_id FROM applied_events ORDER BY event_id")]


def test_applied_types_are_chain_event_types():
    assert ledger.APPLIED_TYPES <= EVENT_TYPES[CHAIN_EVENTS]


async def test_an_ignored_type_is_neither_proven_nor_recorded_and_an_applied_one_is_both(tmp_path):
    held = event("5/0/1", "EscrowHeld", job="j", consumer="c", amount=40)
    attested = event("6/0/0", "JobAttested", job="j", member="c", result_hash="ab", records_used=0)
    chain = Chain(held, attested)
    c = consumer(tmp_path, chain)
    try:
        await c._apply(Message(held.encode(), 0))
        await c._apply(Message(attested.encode(), 1))
        await c._apply(Message(held.encode(), 2))  # read twice: applied once
        assert chain.checked == ["5/0/1", "5/0/1"]
        assert applied(c) == ["5/0/1"]
        assert ledger.escrow(c.conn) == {"j": 40} and ledger.balances(c.conn) == {"c": -40}
    finally:
        c.store.close()


async def test_a_forged_ignored_event_does_not_squat_the_id_of_a_real_one(tmp_path):
    real = event("7/0/0", "JobSettled", job="j", consumer="c", escrow=40, charged=30, refunded=10,
                 payouts={"p": 30}, charges={"p.a": 30})
    forged = event("7/0/0", "JobCompleted", job="j", type="aggregation", consumer="c", reason="x", result_hash=None)
    c = consumer(tmp_path, Chain(real))
    try:
        await c._apply(Message(forged.encode(), 0))
        assert applied(c) == []
        await c._apply(Message(real.encode(), 1))
        assert applied(c) == ["7/0/0"] and ledger.balances(c.conn) == {"p": 30, "c": 10}
    finally:
        c.store.close()


def relayed(e: Event, offset: int, type_: str | None = None) -> Message:
    """``e`` as the relay publishes it, its type in the ``rdx-event-type`` header (or ``type_``)."""
    return Message(e.encode(), offset, headers=(("rdx-event-id", e.id.encode()),
                                                ("rdx-event-type", (type_ or e.type).encode())))


async def test_a_record_whose_header_names_an_ignored_type_is_skipped_unread_and_a_lying_header_suppresses_nothing(
        tmp_path):
    held = event("5/0/1", "EscrowHeld", job="j", consumer="c", amount=40)
    chain = Chain(held)
    c = consumer(tmp_path, chain)
    try:
        await c._apply(Message(b"not json", 0, headers=(("rdx-event-type", b"JobAttested"),)))
        await c._apply(relayed(held, 1, "JobReleased"))  # a real event's bytes under a header that lies
        assert chain.checked == [] and applied(c) == [] and c.store.count_unforwarded() == 0
        await c._apply(relayed(held, 2))
        assert applied(c) == ["5/0/1"] and ledger.escrow(c.conn) == {"j": 40}
        await c._apply(Message(b"not json", 3, headers=(("rdx-event-type", b"EscrowHeld"),)))
        await c._apply(Message(b"not json", 4, headers=(("rdx-event-type", b"NoSuchType"),)))
        assert [r for (r,) in c.conn.execute('SELECT reason FROM dead_letters ORDER BY "offset"')] == \
            ["not_json", "not_json"]
    finally:
        c.store.close()


async def test_a_record_that_is_no_event_is_still_a_dead_letter(tmp_path):
    c = consumer(tmp_path, Chain())
    try:
        await c._apply(Message(b'{"not": "an event"}', 3))
        await c._apply(Message(json.dumps({**json.loads(event("8/0/0", "JobLocked").encode()), "type": "Nope"}).encode(), 4))
        assert [r for (r,) in c.conn.execute('SELECT reason FROM dead_letters ORDER BY "offset"')] == \
            ["not_envelope", "unknown_type"]
        assert applied(c) == []
    finally:
        c.store.close()
