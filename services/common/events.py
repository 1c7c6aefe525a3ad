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

from services.common.deadletter import Reason, dead_letter_topic

CHAIN_EVENTS = "rdx.chain.events.v1"
AUDIT = "rdx.audit.v1"
JOB_STATUS = "rdx.jobs.status.v1"
EVENT_TOPICS = [CHAIN_EVENTS, AUDIT, JOB_STATUS]
TOPICS = EVENT_TOPICS + [dead_letter_topic(t) for t in EVENT_TOPICS]  # every topic rdx creates

# The event types each topic carries. A consumer dead-letters any other type rather than record it
# as applied, so an event from a newer producer can be replayed once the consumer knows it.
# A new chain event type goes here too (tests/unit/common/test_event_contract.py checks the chain's).
EVENT_TYPES: dict[str, frozenset[str]] = {
    CHAIN_EVENTS: frozenset({
        "MemberRegistered", "MemberNodeSet", "KeyRotated", "MemberSuspended", "MemberReinstated",
        "KeyDelegated", "KeyUndelegated",
        "AssetListed", "AssetUpdated", "AssetDelisted", "AssetSuspended", "DynamicPriceChanged",
        "AccessRequested", "AccessApproved", "AccessGranted", "AccessRejected", "AccessRevoked", "AccessExpired",
        "JobAuthorized", "JobAttested", "JobCompleted", "JobFailed", "JobAborted", "JobSettled",
        "JobLocked", "JobReleased", "JobRecordsDisputed",  # fair exchange (docs/compute.md)
        "CreditsDeposited", "CreditsWithdrawn", "CreditsTransferred", "EscrowHeld",
        "PolicyPublished", "AuditAnchored",
        "BoardConfigured", "ProposalSubmitted", "ProposalApproved", "ProposalExecuted", "ProposalFailed",
        "ProposalExpired", "KeyRecovered", "ValidatorUpdated", "ParamsChanged", "UpgradeScheduled",
        "UpgradeCancelled", "UpgradeApplied",
    }),
    AUDIT: frozenset({"ApiCall"}),
    JOB_STATUS: frozenset({"JobStatus", "JobProgress"}),
}

VERSION = 1  # the envelope version this code writes and reads
MAX_EVENT_BYTES = 1 << 20  # the broker's default message.max.bytes; anything larger is a bug
MAX_DEPTH = 32  # nesting of objects and lists; rdx's deepest event (a listing with a sample) nests 6


class EventDecodeError(ValueError):
    """The bytes on the topic are not a valid rdx event. ``reason`` says which check failed."""

    def __init__(self, message: str, reason: Reason = Reason.NOT_ENVELOPE):
        super().__init__(message)
        self.reason = reason


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=100)
    version: int = VERSION
    entity: str = Field(min_length=1, max_length=200, description="the key: events of one entity stay in order")
    source: str = Field(min_length=1, max_length=50)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    data: dict[str, Any] = Field(default_factory=dict)

    def encode(self) -> bytes:
        # The bytes model_dump_json() gives (every option at its default), without its text round
        # trip and keyword passing: the relay encodes every chain event, ~1.5 us each.
        raw = self.__pydantic_serializer__.to_json(self)
        if len(raw) > MAX_EVENT_BYTES:
            raise ValueError(f"event {self.id} is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
        return raw

    @classmethod
    def decode(cls, raw: bytes | None) -> "Event":
        """The event in ``raw``, or EventDecodeError. Every message names a check or the failing
        fields, never the payload: it is logged."""
        if raw is None:
            raise EventDecodeError("not an rdx event: a null value (tombstone)", Reason.TOMBSTONE)
        if len(raw) > MAX_EVENT_BYTES:
            raise EventDecodeError(f"not an rdx event: {len(raw)} bytes, over {MAX_EVENT_BYTES}", Reason.OVERSIZE)
        try:
            text = bytes(raw).decode("utf-8")  # json.loads would also guess UTF-16 and -32
        except UnicodeDecodeError as exc:
            raise EventDecodeError(f"not an rdx event: not UTF-8 at byte {exc.start}", Reason.NOT_UTF8) from None
        try:
            doc = json.loads(text)
        except RecursionError:
            raise EventDecodeError("not an rdx event: nested too deep to parse", Reason.TOO_DEEP) from None
        except ValueError as exc:
            raise EventDecodeError(f"not an rdx event: {type(exc).__name__}", Reason.NOT_JSON) from None
        if depth(doc) > MAX_DEPTH:
            raise EventDecodeError(f"not an rdx event: nested deeper than {MAX_DEPTH}", Reason.TOO_DEEP)
        try:
            event = cls.model_validate(doc)
        except ValidationError as exc:
            # Field names only (cut short: an unknown one comes from the sender), never values.
            fields = "; ".join(f"{e['type']} at {'.'.join(str(p)[:40] for p in e['loc']) or 'top'}"
                               for e in exc.errors()[:5])
            raise EventDecodeError(f"not an rdx event: {fields}", Reason.NOT_ENVELOPE) from None
        if event.version != VERSION:
            raise EventDecodeError(f"envelope version {event.version}, not {VERSION}", Reason.UNKNOWN_VERSION)
        return event


def depth(doc: Any) -> int:
    """How deeply objects and lists nest in a parsed JSON document (a scalar is 0). Iterative, so a
    hostile document cannot exhaust the stack here."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest
