"""The relay's published form of a chain event: ``to_event`` builds the Event without pydantic's
``model_construct`` (half its cost), so it is held here to be that method's very instance; and the
traceparents it makes for events of untraced txs, a batch at a time, are the producer's default
form (a new trace each)."""

from __future__ import annotations

from services.common import tracing
from services.common.events import Event
from services.consensus.relay import Relay, _block_time, _new_traceparents, to_event
from services.consensus.state import ChainEvent

EVENTS = [
    ChainEvent(7, 0, 0, 1_764_780_000, "KeyRotated", "member:bank", {"account": "bank", "public_key": "k" * 44}),
    ChainEvent(8, -1, 2, 1_764_780_005, "AccessExpired", "access:a1", {}),
    ChainEvent(9, 3, 1, 1_764_780_010, "JobSettled", "job:j1", {"payments": [{"to": "tel", "amount": 12}],
                                                                 "height": 1, "note": "ünï\u2028\x1f"}),
    ChainEvent(10, 4, 0, 0, "CreditsTransferred", "member:x", {"nested": {"deep": [None, True, -3]}},
               trace="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
]


def constructed(e: ChainEvent) -> Event:
    return Event.model_construct(id=e.id, type=e.type, version=1, entity=e.entity, source="consensus",
                                 occurred_at=_block_time(e.time), data={**e.data, "height": e.height})


def test_to_event_is_the_instance_model_construct_makes():
    for e in EVENTS:
        fast, slow = to_event(e), constructed(e)
        assert type(fast) is Event
        assert fast == slow
        assert fast.__dict__ == slow.__dict__ and list(fast.__dict__) == list(slow.__dict__)
        assert fast.model_fields_set == slow.model_fields_set == set(Event.model_fields)
        assert fast.__pydantic_extra__ is slow.__pydantic_extra__ is None
        assert fast.__pydantic_private__ is slow.__pydantic_private__ is None
        assert fast.encode() == slow.encode() == slow.model_dump_json().encode()
        assert Event.decode(fast.encode()) == Event.model_validate(slow.model_dump())


def test_to_event_shares_no_data_with_the_chain_event():
    e = EVENTS[0]
    published = to_event(e)
    assert published.data["height"] == e.height and "height" not in e.data
    published.data["account"] = "changed"
    assert e.data["account"] == "bank" and to_event(e).data["account"] == "bank"


def test_new_traceparents_are_valid_and_each_of_a_new_trace():
    made = _new_traceparents(500)
    assert len(made) == 500
    assert all(tracing.valid_traceparent(t) == t for t in made)
    assert len({t[3:35] for t in made}) == 500 and len({t[36:52] for t in made}) == 500
    assert all(t.startswith("00-") and t.endswith("-01") for t in made)
    assert _new_traceparents(0) == []


def test_the_relay_gives_every_event_a_traceparent_its_own_trace_or_a_new_one():
    untraced = EVENTS[:3]
    spans, traceparents = Relay._trace(untraced)
    assert spans == [] and len(traceparents) == 3 and len(set(traceparents)) == 3
    assert all(tracing.valid_traceparent(t) for t in traceparents)
    bad = ChainEvent(11, 0, 0, 0, "KeyRotated", "member:y", {}, trace="00-" + "0" * 32 + "-" + "2" * 16 + "-01")
    spans, traceparents = Relay._trace([*untraced, EVENTS[3], bad])
    assert spans == []  # tracing is off in unit tests: the tx's own context is passed on as it is
    assert traceparents[3] == EVENTS[3].trace
    assert tracing.valid_traceparent(traceparents[4]) and traceparents[4] != bad.trace
    assert len(set(traceparents)) == 5
