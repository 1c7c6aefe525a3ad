"""Errors as RFC 9457 problem+json, the same shape for every failure; internals never leak.

Every problem has a stable ``type``, a URN a client can switch on (docs/gateway.md, "Errors"):
``urn:rdx:problem:<title in lower case, dashes>`` for the gateway's own (``…:forbidden``,
``…:too-many-requests``), ``urn:rdx:problem:chain:<code>`` for a transaction the chain refused
(``…:chain:bad-nonce``, with the numeric ``code`` beside it), and ``urn:rdx:problem:catalog`` or
``…:billing`` for an error those services gave, passed through with their title, detail and errors.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from services.gateway.db import StoreUnavailable

log = logging.getLogger("rdx.gateway")
PROBLEM = "application/problem+json"
TYPE = "urn:rdx:problem:"


def type_of(title: str) -> str:
    return TYPE + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "error")


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None,
                 errors: list | None = None, type: str | None = None, code: int | None = None):  # noqa: A002
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers or {}
        self.errors, self.type, self.code = errors, type or type_of(title), code


def problem_response(request: Request, status: int, title: str, detail: str = "",
                     headers: dict[str, str] | None = None, errors: list | None = None,
                     type: str | None = None, code: int | None = None) -> JSONResponse:  # noqa: A002
    body = {"type": type or type_of(title), "title": title, "status": status, "detail": detail,
            "instance": getattr(request.state, "request_id", "")}
    if errors:
        body["errors"] = errors
    if code is not None:
        body["code"] = code
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem):
        request.state.reason = exc.detail or exc.title
        return problem_response(request, exc.status, exc.title, exc.detail, exc.headers, exc.errors, exc.type,
                                exc.code)

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
        if exc.status_code == 413:  # a streamed body past the limit: the same problem as a declared one
            limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
            return problem_response(request, 413, "Payload too large", f"request bodies are limited to {limit} bytes")
        return problem_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception):
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        request.state.reason = "internal error"
        return problem_response(request, 500, "Internal error", "the request could not be completed")
