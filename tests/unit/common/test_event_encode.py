"""``Event.encode`` serialises through the model's serializer directly: the bytes must be those of
``model_dump_json()`` for every kind of event rdx publishes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.common.events import MAX_EVENT_BYTES, Event

CASES = [
    Event(id="1/0/0", type="KeyRotated", entity="member:bank", source="consensus",
          occurred_at=datetime(2026, 12, 3, 18, 0, tzinfo=timezone.utc), data={"account": "bank", "height": 1}),
    Event(id="a", type="ApiCall", entity="e", source="gateway",
          occurred_at=datetime(2026, 12, 3, 18, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2))),
          data={"text": "ünï\u2028\x00\x1f\"\\/", "n": -(2**53), "f": 0.1, "big": 2**70, "none": None,
                "list": [1, "x", [True, {"k": []}]]}),
    Event(id="b", type="JobStatus", entity="job:1", source="compute", data={}),
    Event.model_construct(id="c", type="JobProgress", version=1, entity="job:2", source="compute",
                          occurred_at=datetime(2026, 1, 1), data={"share": 0.5}),
]


@pytest.mark.parametrize("event", CASES)
def test_encode_gives_the_bytes_of_model_dump_json(event):
    assert event.encode() == event.model_dump_json().encode()


def test_an_oversized_event_is_still_refused():
    with pytest.raises(ValueError, match="over the"):
        Event(id="x", type="t", entity="e", source="s", data={"blob": "x" * MAX_EVENT_BYTES}).encode()
