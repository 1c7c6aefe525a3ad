"""The gateway's OpenAPI document, completed: how to authenticate (security schemes) and what every
error looks like (problem+json) on each /v1 operation. FastAPI writes the rest from the routes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from services.gateway.problems import PROBLEM, TYPE


class ProblemDoc(BaseModel):
    type: str = Field(description=f"a stable URN to switch on: {TYPE}<title>, {TYPE}chain:<code>, "
                                  f"{TYPE}catalog, {TYPE}billing (docs/gateway.md)")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request id, also in the X-Request-Id header")
    errors: list[dict[str, Any]] | None = Field(None, description="field by field: [{field, message}]")
    code: int | None = Field(None, description="the chain's result code, when the chain refused a transaction")


SECURITY = {
    "apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "rdx_<key id>.<secret>",
               "description": "an API key: scoped to one member and one role"},
    "httpSignature": {"type": "apiKey", "in": "header", "name": "Signature", "description": (
        "an RFC 9421 signature (Ed25519, keyid = the chain account) over @method, @target-uri and "
        "content-digest, with Signature-Input and Content-Digest headers (docs/signing.md)")},
}
ERRORS = {"400": "Bad request", "401": "Not authenticated", "402": "Insufficient funds (the chain refused)",
          "403": "Forbidden", "404": "Not found", "409": "Conflict", "413": "Body too large",
          "422": "Invalid request", "429": "Rate limit or quota (Retry-After)", "500": "Internal error",
          "502": "A service behind the gateway failed", "503": "Unavailable: retry (Retry-After)"}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY)
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = ProblemDoc.model_json_schema(ref_template="#/components/schemas/{model}")
    problem = {"content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for path, operations in doc.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}, {"httpSignature": []}]
            responses = operation.setdefault("responses", {})
            for status, description in ERRORS.items():
                responses[status] = {"description": description, **problem}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc
