"""Tracing: a trace that follows one flow across HTTP calls, chain txs, Kafka events and logs.

Two layers:

* Always on, and nearly free: a trace id per flow, kept in a context variable, written into every
  JSON log line and carried as a W3C ``traceparent`` header on HTTP answers and Kafka records.
* OpenTelemetry spans, exported over OTLP/HTTP, only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set in the service's environment. Off by default:
  then no SDK is imported, no span is made and the code paths below are a flag test.

Spans: each service's HTTP requests (FastAPI instrumentation), the gateway's broadcast of a tx,
the consensus relay's publish of a tx's chain events, and every Kafka consumer's handling of an
event. A span carries names, routes, event types and ids, tx types and hashes — what is already
public on the chain or in the API — never a payload, a key, a query string or a record.

A ``traceparent`` from outside (an HTTP header, a Kafka header, a tx) is read strictly: one that
is not the W3C form (version 00, lower-case hex, ids not all zero) is ignored and the work starts a
new trace. Nothing from it reaches a log or an error.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("rdx.tracing")

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("rdx_trace_id", default=None)
# W3C trace context, version 00: trace id and parent id not all zeros (the spec's invalid values).
_TRACEPARENT = re.compile(r"^00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})$")
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class _StrictTraceContext(TraceContextTextMapPropagator):
    """W3C trace context read as ``valid_traceparent`` reads it (OpenTelemetry's own propagator also
    takes later versions and a trailing newline), so HTTP, Kafka and txs agree on what continues a
    trace. Only traceparent/tracestate: no baggage is read or sent."""

    def extract(self, carrier, context=None, getter=None):
        values = (getter.get(carrier, "traceparent") if getter is not None else carrier.get("traceparent")) or []
        value = values if isinstance(values, str) else (values[-1] if len(values) == 1 else None)
        if valid_traceparent(value) is None:
            return context if context is not None else otel_context.Context()
        return super().extract(carrier, context, getter) if getter is not None else super().extract(carrier, context)


_propagator = _StrictTraceContext()
# The SDK's provider and tracer once ``setup`` turned export on. Kept here rather than installed as
# OpenTelemetry's global provider (which can be set only once per process), so tests can turn it on
# and off, and only rdx's own spans are exported.
_provider = None
_tracer = None


# -- the trace id (always on) ---------------------------------------------------------------------
def new_trace_id() -> str:
    return os.urandom(16).hex()


def current() -> str | None:
    """The trace id of the work at hand: the current span's, else the one set for this flow."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return trace.format_trace_id(span_context.trace_id)
    return _trace_id.get()


def set_current(trace_id: str | None) -> contextvars.Token:
    return _trace_id.set(trace_id)


def reset(token: contextvars.Token) -> None:
    _trace_id.reset(token)


def to_traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{os.urandom(8).hex()}-01"


def valid_traceparent(value: str | bytes | None) -> str | None:
    """``value`` as text if it is a well-formed traceparent, else None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or len(value) != 55:
        return None
    return value if _TRACEPARENT.match(value) else None


def from_traceparent(value: str | bytes | None) -> str | None:
    """The trace id of a well-formed traceparent, else None (a malformed header starts a new trace)."""
    value = valid_traceparent(value)
    return value[3:35] if value else None


def outgoing_traceparent() -> str:
    """What to send on: the current span's context when there is one, else the flow's trace id
    (or a new one) with a fresh parent id."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return _format(span_context)
    return to_traceparent(_trace_id.get() or new_trace_id())


async def inject_httpx(request) -> None:
    """An httpx request hook: the call carries the current trace on (to rdx's own services only:
    a member's endpoint is not told the exchange's trace ids)."""
    request.headers["traceparent"] = outgoing_traceparent()


# -- spans (only when export is on) ---------------------------------------------------------------
def endpoint(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    return next((env[name] for name in ENDPOINT_VARS if env.get(name)), None)


def enabled() -> bool:
    """Whether spans are being made and exported (``setup`` found an endpoint)."""
    return _provider is not None


def setup(service: str, app: Any = None, *, exporter: Any = None) -> bool:
    """Turn span export on for this process if an OTLP endpoint is configured (or an ``exporter``
    is given: the tests' in-memory one); instrument the FastAPI ``app`` too. Returns whether
    tracing is on. The SDK is imported only then."""
    global _provider, _tracer
    if exporter is None and endpoint() is None:
        return False
    if _provider is None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers and timeout from the standard OTEL_ variables
        provider = TracerProvider(resource=Resource.create({"service.name": f"rdx-{service}"}))
        provider.add_span_processor(BatchSpanProcessor(_scrubbing(exporter)))
        _provider, _tracer = provider, provider.get_tracer("rdx")
        propagate.set_global_textmap(_propagator)  # what the FastAPI instrumentation reads headers with
        log.info("tracing on: spans of %s exported over OTLP", service)
    if app is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, server_request_hook=_path_only,
                                           excluded_urls="/healthz,/readyz,/metrics", exclude_spans=["receive", "send"])
    return True


def _scrubbing(exporter: Any) -> Any:
    """``exporter`` behind a filter that keeps only the type of an exception: the instrumentation
    records an unhandled exception's message and stack trace (and puts the message in the span's
    status), and a message can quote a record, a key or a member's data."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Status

    def scrub(s: ReadableSpan) -> ReadableSpan:
        if s.status.description is None and not any(e.name == "exception" for e in s.events):
            return s
        events = [Event(e.name, {"exception.type": e.attributes.get("exception.type", "")}, e.timestamp)
                  if e.name == "exception" else e for e in s.events]
        return ReadableSpan(name=s.name, context=s.context, parent=s.parent, resource=s.resource,
                            attributes=s.attributes, events=events, links=s.links, kind=s.kind,
                            status=Status(s.status.status_code), start_time=s.start_time, end_time=s.end_time,
                            instrumentation_scope=s.instrumentation_scope)

    class Scrubbing(SpanExporter):
        def export(self, spans):
            return exporter.export([scrub(s) for s in spans])

        def shutdown(self) -> None:
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return exporter.force_flush(timeout_millis)

    return Scrubbing()


def shutdown() -> None:
    """Export what is buffered (bounded by the exporter's timeout) and stop."""
    global _provider, _tracer
    if _provider is not None:
        _provider.shutdown()
        _provider = _tracer = None


def _path_only(span, scope: dict) -> None:
    """The instrumentation records the URL with its query string; a query can hold a search text
    or a member's name, so the span keeps the path alone."""
    if span is None or not span.is_recording():
        return
    path = scope.get("path", "")
    span.set_attribute("http.target", path)
    span.set_attribute("http.url", path)
    span.set_attribute("url.query", "")


def context_from(traceparent: str | bytes | None) -> otel_context.Context | None:
    """The remote parent named by a well-formed ``traceparent``; None for anything else."""
    value = valid_traceparent(traceparent)
    if value is None:
        return None
    ctx = _propagator.extract({"traceparent": value})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


@contextmanager
def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, parent: str | bytes | None = None,
         attributes: Mapping[str, str | int] | None = None) -> Iterator[Any]:
    """A span made current for the block, child of ``parent`` (a traceparent) when that is
    well-formed, else of the current span, else a new trace. Yields None when tracing is off."""
    if _provider is None:
        yield None
        return
    ctx = context_from(parent) if parent is not None else None
    # An exception's message can quote a chain log or a record: the span keeps its type alone.
    with _tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as current_span:
        try:
            yield current_span
        except BaseException as exc:
            _failed(current_span, exc)
            raise


def start_span(name: str, *, kind: SpanKind, parent: str | bytes | None, attributes: Mapping[str, str | int]):
    """A span that is not made current (the relay's one per traced event of a batch), or None when
    tracing is off. The caller ends it."""
    if _provider is None:
        return None
    return _tracer.start_span(name, context=context_from(parent), kind=kind, attributes=attributes)


def end(spans: list, error: BaseException | None = None) -> None:
    """End spans made by ``start_span``; with ``error``, marked failed (its type only)."""
    for span_ in spans:
        if error is not None:
            _failed(span_, error)
        span_.end()


def _failed(span_: Any, error: BaseException) -> None:
    span_.set_status(trace.StatusCode.ERROR)
    span_.set_attribute("error.type", type(error).__name__)


def traceparent_of(span_: Any) -> str | None:
    context = span_.get_span_context() if span_ is not None else None
    return _format(context) if context is not None and context.is_valid else None


def _format(context) -> str:
    return (f"00-{trace.format_trace_id(context.trace_id)}-{trace.format_span_id(context.span_id)}-"
            f"{int(context.trace_flags):02x}")


PRODUCER, CONSUMER, CLIENT = SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CLIENT
