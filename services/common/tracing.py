"""A trace id that follows one flow across HTTP calls, Kafka events and logs.

It travels as a W3C ``traceparent`` header, so standard tooling can read it.
"""

from __future__ import annotations

import contextvars
import os
import re

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rdx_trace_id", default=None)
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def new_trace_id() -> str:
    return os.urandom(16).hex()


def current() -> str | None:
    return _trace_id.get()


def set_current(trace_id: str | None) -> contextvars.Token:
    return _trace_id.set(trace_id)


def reset(token: contextvars.Token) -> None:
    _trace_id.reset(token)


def to_traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


def from_traceparent(value: str | bytes | None) -> str | None:
    """The trace id of a well-formed traceparent, else None (a malformed header starts a new trace)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    match = _TRACEPARENT.match(value or "")
    return match.group(1) if match else None
