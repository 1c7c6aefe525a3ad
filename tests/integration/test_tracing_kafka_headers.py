"""A consumer with tracing on, on a real broker: a record whose traceparent header is hostile is
applied like any other, in a new root span; one with a well-formed header continues that trace."""

from __future__ import annotations

import uuid

from kafkakit import consume_until, send_raw
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from services.common.events import Event
from services.common.kafka import IdempotentConsumer

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HOSTILE = [b"\xff\xfe not ascii", None, b"", b"x" * 60_000, VALID.upper().encode(), b"ff" + VALID[2:].encode(),
           b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", VALID.encode() + b"\n",
           b"\x00" * 55]


async def test_hostile_traceparent_headers_neither_stop_the_consumer_nor_continue_a_trace(kafka, tmp_path):
    topic = f"t.{uuid.uuid4().hex[:8]}"
    records = [(f"h/{i}", [("traceparent", value)]) for i, value in enumerate(HOSTILE)]
    records.append(("repeated", [("traceparent", VALID.encode()), ("traceparent", b"garbage")]))  # the last counts
    records.append(("valid", [("traceparent", b"garbage"), ("traceparent", VALID.encode())]))
    for event_id, headers in records:
        event = Event(id=event_id, type="Thing", entity="thing:1", source="test", data={})
        await send_raw(kafka.bootstrap, topic, event.encode(), key=b"thing:1", headers=headers)

    seen: dict[str, str | None] = {}

    def handler(event, conn):
        seen[event.id] = tracing.current()
        conn.execute("INSERT INTO got VALUES (?)", (event.id,))

    exporter = InMemorySpanExporter()
    assert tracing.setup("test", exporter=exporter)
    consumer = IdempotentConsumer(kafka.bootstrap, "test", [topic], f"g-{topic}", tmp_path / "c.sqlite", handler,
                                  event_types={})
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS got (id TEXT)")
    await consumer.start()
    try:
        assert await consume_until(consumer, "SELECT count(*) FROM got", len(records)) == len(records)
    finally:
        await consumer.stop()
        tracing.shutdown()

    spans = {dict(s.attributes)["rdx.event.id"]: s for s in exporter.get_finished_spans()}
    assert set(spans) == set(seen) == {event_id for event_id, _ in records}
    valid_trace = VALID[3:35]
    assert seen.pop("valid") == valid_trace
    assert spans.pop("valid").parent.span_id == int(VALID[36:52], 16)
    for event_id, span in spans.items():  # every hostile header: a new root, its own trace id
        assert span.parent is None, event_id
        assert seen[event_id] == format(span.context.trace_id, "032x") != valid_trace
