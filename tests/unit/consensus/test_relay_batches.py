"""The relay's publish of a full batch of events (``Relay.batch``) is one record batch, so one
produce request: aiokafka sends one batch per partition per request, and its default batch
(16 KiB) split a block of settlements into a run of requests the broker handled one by one."""

from __future__ import annotations

import inspect

from aiokafka.producer.message_accumulator import BatchBuilder

from services.common.events import Event
from services.common.kafka import EventProducer
from services.consensus.relay import RECORD_BATCH_BYTES, Relay, relay_producer


def test_a_full_relay_batch_of_settlement_events_fills_one_record_batch():
    batch = inspect.signature(Relay).parameters["batch"].default
    # A settlement's 8 events average ~300 bytes as published (JobAuthorized ~770 with one input).
    event = Event(id="123456/17/3", type="JobAttested", entity="job:c0.j123456", source="consensus",
                  data={"job": "c0.j123456", "member": "c0-member", "result_hash": "cd" * 32, "records_used": 7,
                        "height": 123456})
    value, key = event.encode(), event.entity.encode()
    assert len(value) >= 250
    builder = BatchBuilder(RECORD_BATCH_BYTES, 0, is_transactional=False, key_serializer=None,
                           value_serializer=None)
    headers = [("rdx-event-id", b"123456/17/3"), ("rdx-event-type", b"JobAttested"), ("traceparent", b"0" * 55)]
    assert all(builder.append(key=key, value=value, timestamp=None, headers=headers) is not None for _ in range(batch))
    assert RECORD_BATCH_BYTES <= 1 << 20  # the broker's default message.max.bytes, which a batch may not exceed


def test_the_relay_producer_fills_batches_of_that_size(tmp_path):
    assert relay_producer("127.0.0.1:1")._options["max_batch_size"] == RECORD_BATCH_BYTES
    assert Relay(tmp_path / "chain.sqlite", tmp_path / "position.sqlite", "127.0.0.1:1").producer._options["max_batch_size"] == RECORD_BATCH_BYTES


def test_a_producer_keeps_aiokafkas_batch_size_unless_given_one():
    assert "max_batch_size" not in EventProducer("127.0.0.1:1", "x")._options
    assert EventProducer("127.0.0.1:1", "x", max_batch_bytes=1 << 18)._options["max_batch_size"] == 1 << 18
