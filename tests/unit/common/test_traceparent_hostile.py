"""A traceparent from outside — an HTTP header, a Kafka header, a tx — is read strictly: anything but
the W3C form is ignored (the work starts a new trace) and nothing fails because of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from services.common.service import Service
from services.common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[3]
VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HOSTILE = [
    None, "", b"", "garbage", b"\xff\xfe\x00\x80" * 14, "x" * 10_000,
    VALID.upper(),  # upper-case hex is not the W3C form
    "ff" + VALID[2:],  # version ff is forbidden
    "01" + VALID[2:],  # a later version may add fields; rdx reads only 00
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    VALID + "\n", VALID[:-1] + "\n", " " + VALID[1:], VALID.replace("-", "_"),
    VALID[:54], VALID + "-extra", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
    "\u0660" * 55,  # 55 characters, none of them ASCII hex
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_traceparent_names_no_parent(value):
    assert tracing.valid_traceparent(value) is None
    assert tracing.from_traceparent(value) is None
    assert tracing.context_from(value) is None


def test_a_valid_traceparent_is_continued():
    assert tracing.from_traceparent(VALID) == VALID[3:35]
    assert tracing.from_traceparent(VALID.encode()) == VALID[3:35]
    assert tracing.context_from(VALID) is not None


@pytest.fixture
def traced_service(tmp_path):
    exporter = InMemorySpanExporter()
    svc = Service(ServiceSettings(service="unit", state_root=tmp_path), title="unit")

    @svc.app.get("/v1/ping")
    async def ping() -> dict:
        with tracing.span("inner"):
            return {"trace": tracing.current()}

    assert tracing.setup("unit", svc.app, exporter=exporter)
    try:
        yield svc, exporter
    finally:
        tracing.shutdown()


async def test_hostile_traceparent_headers_start_new_traces_and_requests_succeed(traced_service):
    svc, exporter = traced_service
    transport = httpx.ASGITransport(app=svc.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://unit") as client:
        for value in HOSTILE:
            headers = {} if value is None else {"traceparent": value if isinstance(value, bytes) else value.encode()}
            resp = await client.get("/v1/ping", headers=headers)
            assert resp.status_code == 200
            trace_id = resp.json()["trace"]
            assert resp.headers["traceparent"].split("-")[1] == trace_id
            assert trace_id != VALID[3:35]
        resp = await client.get("/v1/ping", headers={"traceparent": VALID})
        assert resp.json()["trace"] == VALID[3:35]
    tracing.shutdown()  # flush
    servers = [s for s in exporter.get_finished_spans() if s.name == "GET /v1/ping"]
    assert len(servers) == len(HOSTILE) + 1
    roots = [s for s in servers if s.parent is None]
    assert len(roots) == len(HOSTILE)  # every hostile header: a new root
    continued = [s for s in servers if s.parent is not None]
    assert [format(s.parent.span_id, "016x") for s in continued] == [VALID[36:52]]
    # The query string never reaches a span (it may hold a search text or a member's name).
    assert all("?" not in str(s.attributes.get("http.url", "")) for s in servers)


async def test_the_query_string_is_not_recorded(traced_service):
    svc, exporter = traced_service
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app), base_url="http://unit") as client:
        assert (await client.get("/v1/ping?q=secret-member-name")).status_code == 200
    tracing.shutdown()
    text = repr([dict(s.attributes) for s in exporter.get_finished_spans()])
    assert "secret-member-name" not in text


async def test_an_unhandled_exception_leaves_its_type_in_the_span_not_its_message(traced_service):
    svc, exporter = traced_service

    @svc.app.get("/v1/boom")
    async def boom() -> dict:
        raise KeyError("member-private-value")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.app, raise_app_exceptions=False),
                                 base_url="http://unit") as client:
        assert (await client.get("/v1/boom")).status_code == 500
    tracing.shutdown()
    spans = [s for s in exporter.get_finished_spans() if s.name == "GET /v1/boom"]
    assert len(spans) == 1 and not spans[0].status.is_ok
    assert [dict(e.attributes) for e in spans[0].events] == [{"exception.type": "KeyError"}]
    assert "member-private-value" not in repr((spans[0].attributes, spans[0].status.description))


def test_without_an_endpoint_tracing_stays_off_and_loads_no_sdk():
    code = ("import sys; from services.common import kafka, service, tracing; "
            "assert not tracing.setup('x') and not tracing.enabled(); "
            "assert not [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
            "'opentelemetry.instrumentation'))]")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
