"""Errors as RFC 9457 problem+json, the same shape for every failure; internals never leak."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.db import StoreUnavailable

log = logging.getLogger("rdx.gateway")
PROBLEM = "application/problem+json"


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None,
                 errors: list | None = None):
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers or {}
        self.errors = errors


def problem_response(request: Request, status: int, title: str, detail: str = "",
                     headers: dict[str, str] | None = None, errors: list | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail,
            "instance": getattr(request.state, "request_id", "")}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem):
        request.state.reason = exc.detail or exc.title
        return problem_response(request, exc.status, exc.title, exc.detail, exc.headers, exc.errors)

    @app.exception_handler(StoreUnavailable)
    async def on_store(request: Request, exc: StoreUnavailable):
        request.state.reason = "state store unavailable"
        return problem_response(request, 503, "Service unavailable", "the gateway's shared state did not answer; retry",
                                {"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError):
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()[:20]]
        request.state.reason = "invalid request"
        return problem_response(request, 422, "Invalid request", "the request does not match the API schema",
                                errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        return problem_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        request.state.reason = "internal error"
        return problem_response(request, 500, "Internal error", "the request could not be completed")
