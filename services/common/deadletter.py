"""Dead letters: records a consumer could not apply, kept with why and where they came from.

A consumer (services/common/kafka.py) forwards such a record to the dead-letter topic of its
source topic, ``<topic>.dlq``: the original key, value (None for a tombstone) and headers, plus
``rdx-dlq-*`` headers saying why, from where, and which service gave up on it. The dead-letter
topic holds what its source holds, so it is access-controlled like its source; the bytes are
never logged. ``rdx dead-letters`` (rdx/deadletters.py) lists them and replays them.

A replay republishes the original record to its source topic and partition. Its event id is
unchanged, so a consumer that had applied it drops it as a duplicate and one that had not
applies it once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import StrEnum

DLQ_SUFFIX = ".dlq"
PREFIX = "rdx-dlq-"
REPLAYED_FROM = "rdx-replayed-from"  # on a replayed record: the dead letter it came from


def dead_letter_topic(topic: str) -> str:
    return f"{topic}{DLQ_SUFFIX}"


class Reason(StrEnum):
    """Why a record was not applied: the ``reason`` label of rdx_kafka_dead_letters_total, a fixed set."""

    TOMBSTONE = "tombstone"              # the value is null
    OVERSIZE = "oversize"                # larger than events.MAX_EVENT_BYTES
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    TOO_DEEP = "too_deep"                # nested deeper than events.MAX_DEPTH
    NOT_ENVELOPE = "not_envelope"        # JSON, but not the event envelope
    UNKNOWN_VERSION = "unknown_version"  # an envelope version this code does not read
    UNKNOWN_TYPE = "unknown_type"        # a type the topic's contract does not name
    UNREADABLE = "unreadable"            # the Kafka client cannot parse the record (a header key not UTF-8)
    HANDLER_FAILED = "handler_failed"    # a valid event whose handler kept raising
    NOT_ON_CHAIN = "not_on_chain"        # a chain event the chain does not hold: forged, or a squatted id
    UNVERIFIED = "unverified"            # a chain event that could not be checked: the chain node did not answer


# Worth replaying once the code or the data is fixed; the others are properties of the bytes,
# which a replay would only dead-letter again.
REPLAYABLE = frozenset({Reason.UNKNOWN_VERSION, Reason.UNKNOWN_TYPE, Reason.HANDLER_FAILED, Reason.UNVERIFIED})

Headers = tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class DeadLetter:
    topic: str       # where the record stood in its source topic
    partition: int
    offset: int
    reason: str
    detail: str      # what failed: a field name, an exception; never the payload
    service: str
    group: str
    attempts: int = 0  # how many times the handler ran (0: it never got a valid event)
    at: float = field(default_factory=time.time)
    key: bytes | None = None
    value: bytes | None = None  # None: a tombstone, or (size >= 0) too large to carry
    size: int = -1  # of the original value; -1 for a null one
    headers: Headers = ()  # the original record's own headers

    @property
    def carried(self) -> bool:
        """Whether this dead letter holds the original record's value (a tombstone's is null)."""
        return self.value is not None or self.size < 0

    @property
    def source(self) -> str:
        """The record's coordinates in its source topic; the id ``rdx dead-letters replay`` takes."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    def without_value(self) -> "DeadLetter":
        return replace(self, value=None)

    def record_headers(self) -> list[tuple[str, bytes | None]]:
        """The headers of the dead-letter record: the original's, then what says why and from where."""
        own = {"reason": self.reason, "detail": self.detail, "topic": self.topic, "partition": self.partition,
               "offset": self.offset, "service": self.service, "group": self.group, "attempts": self.attempts,
               "at": f"{self.at:.3f}", "size": self.size}
        return [*original_headers(self.headers), *((PREFIX + k, str(v).encode()) for k, v in own.items())]

    @classmethod
    def from_record(cls, key: bytes | None, value: bytes | None, headers) -> "DeadLetter":
        """A dead-letter record read back from a ``.dlq`` topic; ValueError if it is not one."""
        ours = {k[len(PREFIX):]: (v or b"").decode("utf-8", "replace")
                for k, v in headers or () if k.startswith(PREFIX)}
        try:
            return cls(topic=ours["topic"], partition=int(ours["partition"]), offset=int(ours["offset"]),
                       reason=ours["reason"], detail=ours.get("detail", ""), service=ours.get("service", ""),
                       group=ours.get("group", ""), attempts=int(ours.get("attempts", 0)),
                       at=float(ours.get("at", 0)), key=key, value=value, size=int(ours.get("size", -1)),
                       headers=original_headers(headers or ()))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"not a dead-letter record (header {exc} missing or malformed)") from None


def original_headers(headers) -> Headers:
    """Headers without the dead-letter ones (which a record from outside may also carry)."""
    return tuple((k, v) for k, v in headers if not k.startswith(PREFIX))
