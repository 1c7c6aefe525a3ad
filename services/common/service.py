"""The service chassis: one FastAPI app with health, readiness and metrics, background tasks,
and a graceful stop on SIGTERM/SIGINT. Every ``services/<name>/__main__.py`` builds one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

import uvicorn
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common import logs, metrics, tracing
from services.common.kafka import EventProducer
from services.common.settings import ServiceSettings, SettingRefused

log = logging.getLogger("rdx.service")

Check = Callable[[], bool]
Task = Callable[[asyncio.Event], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]


def main(build: Callable[[], "Service"]) -> None:
    """A service's entry point: build it and run it. A setting it cannot use, found while it is built
    or while its startup hooks run (a Kafka password file, a trust anchor), ends it with one line
    naming the setting and the reason, not a traceback; so does a Kafka no broker of which answers."""
    try:
        build().run()
    except SettingRefused as exc:
        raise SystemExit(f"rdx: {exc}") from None
    except KafkaConnectionError:  # at start (a broker not up yet): Kubernetes starts it again
        where = os.environ.get("RDX_KAFKA_BOOTSTRAP") or ServiceSettings.model_fields["kafka_bootstrap"].default
        raise SystemExit(f"rdx: RDX_KAFKA_BOOTSTRAP: no Kafka broker answered at {where[:200]}") from None


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the chassis owns SIGTERM and the stop order."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class Service:
    def __init__(self, settings: ServiceSettings, *, title: str, version: str = "0.1.0"):
        self.settings = settings
        self.name = settings.service
        self.app = FastAPI(title=title, version=version)
        self._checks: dict[str, Check] = {}
        self._tasks: list[tuple[str, Task]] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self.stopping = asyncio.Event()
        self._install_routes()

    # -- wiring ---------------------------------------------------------------------------------
    def readiness(self, name: str, check: Check) -> None:
        """``/readyz`` answers 200 only when every check passes."""
        self._checks[name] = check

    def task(self, name: str, task: Task) -> None:
        """A background coroutine run until stop; it gets the stop event. If it dies, the service stops."""
        self._tasks.append((name, task))

    def on_startup(self, hook: Hook) -> None:
        self._startup.append(hook)

    def on_shutdown(self, hook: Hook) -> None:
        """Shutdown hooks run in reverse order of registration, after the HTTP server has stopped."""
        self._shutdown.append(hook)

    def producer(self) -> EventProducer:
        """A Kafka producer started with the service, stopped after it, and part of readiness."""
        producer = EventProducer(self.settings.kafka_bootstrap, self.name)
        self.on_startup(producer.start)
        self.on_shutdown(producer.stop)
        self.readiness("kafka", lambda: producer.ready)
        return producer

    def _install_routes(self) -> None:
        app, name = self.app, self.name

        @app.middleware("http")
        async def observe(request: Request, call_next):
            # With tracing on, the request's span (made outside this middleware) already continued the header.
            trace_id = (tracing.current() or tracing.from_traceparent(request.headers.get("traceparent"))
                        or tracing.new_trace_id())
            token = tracing.set_current(trace_id)
            started = time.perf_counter()
            status = 500
            try:
                response = await call_next(request)
                status = response.status_code
                response.headers["traceparent"] = tracing.outgoing_traceparent()
                return response
            finally:
                route = request.scope.get("route")
                path = getattr(route, "path", "unmatched")
                metrics.HTTP_REQUESTS.labels(name, request.method, path, str(status)).inc()
                metrics.HTTP_LATENCY.labels(name, request.method, path).observe(time.perf_counter() - started)
                tracing.reset(token)

        @app.get("/healthz", include_in_schema=False)
        async def healthz() -> dict:
            return {"status": "ok", "service": name}

        @app.get("/readyz", include_in_schema=False)
        async def readyz() -> JSONResponse:
            failing = [check for check, ok in self._run_checks().items() if not ok]
            metrics.SERVICE_UP.labels(name).set(0 if failing else 1)
            body = {"status": "not ready" if failing else "ready", "service": name, "failing": failing}
            return JSONResponse(body, status_code=503 if failing else 200)

        @app.get("/metrics", include_in_schema=False)
        async def prometheus() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def _run_checks(self) -> dict[str, bool]:
        results = {}
        for check_name, check in self._checks.items():
            try:
                results[check_name] = bool(check())
            except Exception:  # noqa: BLE001 - a failing check means not ready
                results[check_name] = False
        return results

    # -- running --------------------------------------------------------------------------------
    def run(self) -> None:
        logs.configure(self.name, self.settings.log_level)
        asyncio.run(self.serve())

    async def serve(self) -> None:
        tracing.setup(self.name, self.app)  # only if an OTLP endpoint is configured
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        config = uvicorn.Config(self.app, host=self.settings.http_host, port=self.settings.http_port,
                                log_config=None, access_log=False, lifespan="off")
        server = _Server(config)
        running: list[asyncio.Task] = []
        try:
            for hook in self._startup:
                await hook()
            running = [asyncio.create_task(task(self.stopping), name=n) for n, task in self._tasks]
            running.append(asyncio.create_task(server.serve(), name="http"))
            log.info("%s listening on %s:%d", self.name, self.settings.http_host, self.settings.http_port)
            stop_wait = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([*running, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for finished in done - {stop_wait}:
                if finished.exception():
                    log.error("%s task %s failed: %r", self.name, finished.get_name(), finished.exception())
                elif not self.stopping.is_set():  # a task that returned because it was told to stop is not news
                    log.error("%s task %s ended unexpectedly", self.name, finished.get_name())
            stop_wait.cancel()
        finally:
            self.stopping.set()
            server.should_exit = True
            await self._drain(running)
            for hook in reversed(self._shutdown):
                try:
                    await hook()
                except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                    log.error("shutdown hook failed: %r", exc)
            tracing.shutdown()  # the spans still buffered go out before the process ends
            log.info("%s stopped", self.name)

    async def _drain(self, running: list[asyncio.Task]) -> None:
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
