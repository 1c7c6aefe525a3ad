"""The portal's only way into the exchange: the gateway's HTTP API, called with the API key the
association issued to the portal for the signed-in person's member and role."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import httpx

from services.portal.oidc import MEMBER_ID, PORTAL_ROLES


class GatewayError(Exception):
    """``kind`` is a message key of the portal (i18n), never the gateway's text."""

    def __init__(self, status: int, kind: str):
        super().__init__(f"{status} {kind}")
        self.status, self.kind = status, kind


class KeysFileError(ValueError):
    pass


def load_keys(path: Path | None) -> dict[str, str]:
    """``{"<member>/<role>": "rdx_<id>.<secret>"}`` from a file only its owner may read."""
    if path is None:
        return {}
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); make it 0600")
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise KeysFileError(f"{path} is not JSON") from None
    if not isinstance(doc, dict):
        raise KeysFileError(f"{path} must hold one JSON object")
    keys = {}
    for who, token in doc.items():
        member, _, role = str(who).partition("/")
        if not MEMBER_ID.match(member) or role not in PORTAL_ROLES or not isinstance(token, str):
            raise KeysFileError(f"{path}: entry {who!r} is not <member>/<role> with a key")
        keys[who] = token
    return keys


class Gateway:
    def __init__(self, base_url: str, keys: dict[str, str], http: httpx.AsyncClient):
        self.base, self._keys, self._http = base_url.rstrip("/"), keys, http

    async def get(self, member: str, role: str, path: str, params: Any = None) -> Any:
        token = self._keys.get(f"{member}/{role}")
        if token is None:
            raise GatewayError(503, "error.no_key")
        try:
            answer = await self._http.get(f"{self.base}/v1{path}", params=params,
                                          headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            raise GatewayError(503, "error.gateway") from None
        if answer.status_code == 200:
            return answer.json()
        kind = {400: "error.bad_request", 401: "error.no_key", 403: "error.forbidden", 404: "error.not_found",
                422: "error.bad_request"}.get(answer.status_code, "error.gateway")
        raise GatewayError(answer.status_code if answer.status_code < 500 else 503, kind)
