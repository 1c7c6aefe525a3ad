"""The event envelope every Kafka topic of rdx carries, and the topic names (the wire contract).

An event's ``id`` is unique and stable: the same fact always has the same id (for chain
events: ``<height>/<tx index>/<event index>``), so a producer may safely publish again after a
crash and a consumer applies each id once.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CHAIN_EVENTS = "rdx.chain.events.v1"
AUDIT = "rdx.audit.v1"
JOB_STATUS = "rdx.jobs.status.v1"
TOPICS = [CHAIN_EVENTS, AUDIT, JOB_STATUS]

MAX_EVENT_BYTES = 1 << 20  # the broker's default message.max.bytes; anything larger is a bug


class EventDecodeError(ValueError):
    """The bytes on the topic are not a valid rdx event."""


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    version: int = 1
    entity: str = Field(min_length=1, max_length=200, description="the key: events of one entity stay in order")
    source: str = Field(min_length=1, max_length=50)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    data: dict[str, Any] = Field(default_factory=dict)

    def encode(self) -> bytes:
        raw = self.model_dump_json().encode()
        if len(raw) > MAX_EVENT_BYTES:
            raise ValueError(f"event {self.id} is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> "Event":
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            # The message names the failing fields only; the payload is not echoed.
            raise EventDecodeError(f"not an rdx event: {type(exc).__name__}") from None
