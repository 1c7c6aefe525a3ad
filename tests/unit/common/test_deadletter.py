"""The pure parts of dead-lettering: why bytes are not an event, the dead-letter record's headers,
and which dead letters a replay sends."""

from __future__ import annotations

import json

import pytest

from rdx.deadletters import plan, select
from services.common.deadletter import REPLAYED_FROM, DeadLetter, Reason, dead_letter_topic, original_headers
from services.common.events import MAX_DEPTH, MAX_EVENT_BYTES, Event, EventDecodeError, depth


def envelope(**fields) -> dict:
    return {"id": "1/0/0", "type": "AssetListed", "entity": "asset:a", "source": "consensus", "data": {}, **fields}


def nested(levels: int) -> dict:
    """An object ``levels`` deep; as an envelope's data, the envelope is one deeper."""
    doc: dict = {}
    for _ in range(levels - 1):
        doc = {"x": doc}
    return doc


POISON = [
    (None, Reason.TOMBSTONE),
    (b"x" * (MAX_EVENT_BYTES + 1), Reason.OVERSIZE),
    (b"\xff\xfe{}", Reason.NOT_UTF8),
    ('{"id": "caf\u00e9"}'.encode("utf-16"), Reason.NOT_UTF8),  # json.loads alone would read UTF-16
    (b"not json at all", Reason.NOT_JSON),
    (b'{"id": ', Reason.NOT_JSON),
    (b"[" * 100_000 + b"]" * 100_000, Reason.TOO_DEEP),  # deeper than the parser's stack
    (json.dumps(envelope(data=nested(MAX_DEPTH))).encode(), Reason.TOO_DEEP),  # parses, one deeper than allowed
    (b"[1, 2, 3]", Reason.NOT_ENVELOPE),
    (b'"a string"', Reason.NOT_ENVELOPE),
    (b"{}", Reason.NOT_ENVELOPE),
    (json.dumps(envelope(extra=1)).encode(), Reason.NOT_ENVELOPE),
    (json.dumps(envelope(id="")).encode(), Reason.NOT_ENVELOPE),
    (json.dumps(envelope(data=[1])).encode(), Reason.NOT_ENVELOPE),
    (json.dumps(envelope(version=2)).encode(), Reason.UNKNOWN_VERSION),
]


@pytest.mark.parametrize("raw,reason", POISON, ids=[f"{r.value}-{i}" for i, (_, r) in enumerate(POISON)])
def test_each_kind_of_poison_is_refused_with_its_reason(raw, reason):
    with pytest.raises(EventDecodeError) as caught:
        Event.decode(raw)
    assert caught.value.reason == reason


def test_a_refusal_names_fields_never_values():
    secret = "4111-1111-1111-1111"
    with pytest.raises(EventDecodeError) as caught:
        Event.decode(json.dumps(envelope(id=secret * 20, entity=None, card=secret)).encode())
    message = str(caught.value)
    assert "string_too_long at id" in message and "extra_forbidden at card" in message
    assert secret not in message


def test_valid_events_decode_including_the_deepest_allowed():
    event = Event.decode(json.dumps(envelope(data=nested(MAX_DEPTH - 1))).encode())
    assert event.type == "AssetListed" and depth(event.data) == MAX_DEPTH - 1  # the envelope: MAX_DEPTH
    assert Event.decode(Event(id="a", type="T", entity="e", source="s").encode()).id == "a"


def test_depth_counts_objects_and_lists():
    assert [depth(1), depth({}), depth([[]]), depth({"a": [1, {"b": 2}]})] == [0, 1, 2, 3]
    assert depth(json.loads("[" * 900 + "]" * 900)) == 900


def letter(**fields) -> DeadLetter:
    base = dict(topic="rdx.chain.events.v1", partition=2, offset=41, reason=Reason.HANDLER_FAILED,
                detail="KeyError: 'member'", service="billing", group="billing-ab12", attempts=4, at=1700000000.5,
                key=b"member:bank", value=b'{"id": "7/0/1"}', size=15, headers=(("traceparent", b"00-x"),))
    return DeadLetter(**{**base, **fields})


def test_a_dead_letter_survives_its_trip_through_record_headers():
    sent = letter(headers=(("traceparent", b"00-x"), ("empty", None), ("rdx-dlq-reason", b"forged")))
    headers = sent.record_headers()
    assert headers[:2] == [("traceparent", b"00-x"), ("empty", None)]  # the original's, a forged dlq one dropped
    back = DeadLetter.from_record(sent.key, sent.value, headers)
    assert back == letter(headers=(("traceparent", b"00-x"), ("empty", None)))
    assert back.source == "rdx.chain.events.v1:2:41" and dead_letter_topic(back.topic) == "rdx.chain.events.v1.dlq"


def test_a_record_without_dead_letter_headers_is_not_a_dead_letter():
    with pytest.raises(ValueError):
        DeadLetter.from_record(None, b"x", [("rdx-dlq-reason", b"tombstone")])
    assert original_headers([("a", b"1"), ("rdx-dlq-topic", b"t")]) == (("a", b"1"),)


def test_replay_plan_sends_each_source_record_once_and_only_what_can_now_succeed():
    letters = [("dlq:0:0", letter(service="billing")),
               ("dlq:0:1", letter(service="catalog")),  # the same record, given up by another service
               ("dlq:0:2", letter(offset=42, reason=Reason.TOMBSTONE, value=None, size=-1)),
               ("dlq:0:3", letter(offset=43, reason=Reason.UNKNOWN_TYPE, value=None, size=2_000_000)),  # not carried
               ("dlq:0:4", letter(offset=44, reason=Reason.UNKNOWN_VERSION))]
    chosen, skipped = plan(letters)
    assert [at for at, _ in chosen] == ["dlq:0:0", "dlq:0:4"]
    assert [(at, why.split(":")[0].split(" ")[0]) for (at, _), why in skipped] == [
        ("dlq:0:1", "the"), ("dlq:0:2", "tombstone"), ("dlq:0:3", "the")]
    assert [at for at, _ in select(letters, service="catalog")] == ["dlq:0:1"]
    assert [at for at, _ in select(letters, reason="tombstone")] == ["dlq:0:2"]
    assert [at for at, _ in select(letters, sources=["rdx.chain.events.v1:2:44"])] == ["dlq:0:4"]
    assert REPLAYED_FROM.startswith("rdx-") and not REPLAYED_FROM.startswith("rdx-dlq-")
