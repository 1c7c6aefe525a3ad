"""The portal's only way into the exchange: the gateway's HTTP API, called with the API key the
association issued to the portal for the signed-in person's member and role."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.common.files import read_regular, reason
from services.portal.oidc import MEMBER_ID, PORTAL_ROLES

log = logging.getLogger("rdx.portal")


class GatewayError(Exception):
    """``kind`` is a message key of the portal (i18n), never the gateway's text."""

    def __init__(self, status: int, kind: str):
        super().__init__(f"{status} {kind}")
        self.status, self.kind = status, kind


class KeysFileError(ValueError):
    pass


MAX_KEYS_FILE_BYTES = 1 << 20


def load_keys(path: Path | None) -> dict[str, str]:
    """``{"<member>/<role>": "rdx_<id>.<secret>"}`` from a regular file only its owner may read, of
    at most 1 MiB (a FIFO is refused at once, not waited on: the file is read again on a request).
    KeysFileError says what is wrong, naming an entry by its position, never quoting the file."""
    if path is None:
        return {}
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeysFileError(f"{path} {reason(exc)}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); make it 0600")
    try:
        doc = json.loads(read_regular(path, MAX_KEYS_FILE_BYTES))
    except OSError as exc:
        raise KeysFileError(f"{path} {reason(exc)}") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError among them
        raise KeysFileError(f"{path} is not JSON") from None
    if not isinstance(doc, dict):
        raise KeysFileError(f"{path} must hold one JSON object")
    keys = {}
    for n, (who, token) in enumerate(doc.items(), 1):
        member, _, role = who.partition("/")
        if not MEMBER_ID.match(member) or role not in PORTAL_ROLES or not isinstance(token, str):
            raise KeysFileError(f"{path}: entry {n} is not <member>/<role> with a key")
        keys[who] = token
    return keys


class Gateway:
    """``keys_file`` is read again when it changes (a key added for a newly admitted member, a rotated
    one); a changed file that is not valid keeps the keys read before."""

    def __init__(self, base_url: str, keys_file: Path | None, http: httpx.AsyncClient):
        self.base, self._http, self._file = base_url.rstrip("/"), http, keys_file
        try:
            self._keys = load_keys(keys_file)
        except KeysFileError as exc:
            raise SystemExit(f"RDX_PORTAL_GATEWAY_KEYS_FILE: {exc}") from None
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self._file.stat() if self._file else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def _token(self, member: str, role: str) -> str | None:
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            try:
                self._keys = load_keys(self._file)
            except KeysFileError as exc:
                log.error("RDX_PORTAL_GATEWAY_KEYS_FILE not reloaded, the keys read before kept: %s", exc)
        return self._keys.get(f"{member}/{role}")

    async def get(self, member: str, role: str, path: str, params: Any = None) -> Any:
        return await self._call("GET", member, role, path, params=params)

    async def post(self, member: str, role: str, path: str, body: Any = None) -> Any:
        return await self._call("POST", member, role, path, json=body)

    async def delete(self, member: str, role: str, path: str) -> Any:
        return await self._call("DELETE", member, role, path)

    def own_key_ids(self, member: str) -> set[str]:
        """The ids of the API keys this portal calls with for ``member`` (a token is ``rdx_<id>.<secret>``):
        the keys page must not let a person revoke the portal's own access."""
        self._token(member, "")  # reads the file again if it changed
        return {token[4:].partition(".")[0] for who, token in self._keys.items()
                if who.partition("/")[0] == member and token.startswith("rdx_")}

    async def _call(self, method: str, member: str, role: str, path: str, **request: Any) -> Any:
        token = self._token(member, role)
        if token is None:
            raise GatewayError(503, "error.no_key")
        try:
            answer = await self._http.request(method, f"{self.base}/v1{path}", **request,
                                              headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError:
            raise GatewayError(503, "error.gateway") from None
        if 200 <= answer.status_code < 300:
            return answer.json() if answer.content else None
        kind = {400: "error.bad_request", 401: "error.no_key", 403: "error.forbidden", 404: "error.not_found",
                409: "error.rejected", 422: "error.bad_request"}.get(answer.status_code, "error.gateway")
        raise GatewayError(answer.status_code if answer.status_code < 500 else 503, kind)

    async def events(self, member: str, role: str, path: str) -> AsyncIterator[dict]:
        """The JSON data of each event of one of the gateway's server-sent event streams (``data:``
        lines up to a blank line, the WHATWG event-stream format; its comments are keep-alives).
        Parsed here rather than with httpx-sse: the gateway's streams carry one JSON value per
        event, which is these few lines."""
        token = self._token(member, role)
        if token is None:
            raise GatewayError(503, "error.no_key")
        try:
            async with self._http.stream("GET", f"{self.base}/v1{path}", headers={"Authorization": f"Bearer {token}"},
                                         timeout=httpx.Timeout(15.0, read=60.0)) as answer:
                if answer.status_code != 200:
                    raise GatewayError(404 if answer.status_code == 404 else 503, "error.gateway")
                data: list[str] = []
                async for line in answer.aiter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
        except (httpx.HTTPError, ValueError):
            raise GatewayError(503, "error.gateway") from None
