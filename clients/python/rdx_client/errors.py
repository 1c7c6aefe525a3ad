"""Every failure the client raises is an ``RdxError``; a gateway's problem+json answer is an
``ApiError`` whose ``type`` is the problem's stable URI (docs/gateway.md, "Errors")."""

from __future__ import annotations

from typing import Any


class RdxError(Exception):
    """Anything the client could not do."""


class ApiError(RdxError):
    """A problem+json answer (RFC 9457). ``status``, ``type``, ``title``, ``detail``, ``code`` (the
    chain's result code, for a tx the chain refused), ``errors`` (field by field, when given) and
    ``body`` (the problem as received, strings and numbers only)."""

    def __init__(self, status: int, body: dict[str, Any] | None = None, *, retry_after: float | None = None):
        body = body if isinstance(body, dict) else {}
        self.status, self.body, self.retry_after = status, body, retry_after
        text = lambda k: v if isinstance(v := body.get(k), str) else ""  # noqa: E731 - hostile bodies: strings only
        self.type = text("type") or "about:blank"
        self.title, self.detail = text("title"), text("detail")
        code = body.get("code")
        self.code = code if isinstance(code, int) and not isinstance(code, bool) else None
        errors = body.get("errors")
        self.errors = [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else f"{status} {self.title}")


class NotFound(ApiError):
    """404."""


class Forbidden(ApiError):
    """401 or 403: not authenticated, or not allowed."""


class RateLimited(ApiError):
    """429 that the client did not (or no longer would) wait out; ``retry_after`` says how long."""


class Unavailable(ApiError):
    """503 (or 502/504) after the retries an idempotent call gets; a write is never resent blindly."""


class ChainRefused(ApiError):
    """The chain refused the transaction; ``code`` is its result code (services/common/tx.py Code)."""


class TransportError(RdxError):
    """The gateway could not be reached, or the connection broke, after the retries allowed."""


class MalformedAnswer(RdxError):
    """The gateway's answer is not what the API promises (not JSON, wrong types, too large).
    Says what was expected and where it differs; never echoes the body."""


class WaitTimeout(RdxError, TimeoutError):
    """A ``wait_*`` helper's deadline passed; ``last`` is the last state seen (or None)."""

    def __init__(self, message: str, last: Any = None):
        super().__init__(message)
        self.last = last


def problem_error(status: int, body: Any, retry_after: float | None = None) -> ApiError:
    body = body if isinstance(body, dict) else {}
    type_ = body.get("type") if isinstance(body.get("type"), str) else ""
    cls = (ChainRefused if type_.startswith("urn:rdx:problem:chain:") else NotFound if status == 404
           else Forbidden if status in (401, 403) else RateLimited if status == 429
           else Unavailable if status in (502, 503, 504) else ApiError)
    return cls(status, body, retry_after=retry_after)
