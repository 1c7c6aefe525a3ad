"""The login and consent app of the association's Ory Hydra (Hydra keeps no users and shows no login
page: it hands each sign-in to such an app through ``login_challenge`` and ``consent_challenge``).

People are read from ``RDX_LOGIN_USERS_FILE`` (JSON, written by :func:`user_record`: scrypt
password hashes, never a password): each has a display name, the member it belongs to and its role
there. On consent the app puts ``rdx_member``, ``rdx_role`` and ``name`` into the ID token. The
portal is a first-party client (``skip_consent``), so no consent screen is shown.

Run: ``python -m rdx.portal_login`` with ``RDX_LOGIN_PORT``, ``RDX_LOGIN_HYDRA_ADMIN`` and the users file.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
PAGE = """<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>登录 Sign in</title></head>
<body><main><h1>登录 <span lang="en">Sign in</span></h1>{problem}
<form method="post" action="/login"><input type="hidden" name="challenge" value="{challenge}">
<p><label for="username">用户名 <span lang="en">User name</span></label><br><input id="username" name="username" autocomplete="username" required></p>
<p><label for="password">密码 <span lang="en">Password</span></label><br><input id="password" name="password" type="password" autocomplete="current-password" required></p>
<p><button type="submit" id="sign-in">登录 <span lang="en">Sign in</span></button></p></form></main></body></html>"""


def user_record(password: str, member: str, role: str, name: str) -> dict:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return {"salt": salt.hex(), "scrypt": digest.hex(), "member": member, "role": role, "name": name}


def password_ok(record: dict, password: str) -> bool:
    digest = hashlib.scrypt(password.encode()[:1024], salt=bytes.fromhex(record["salt"]), **SCRYPT)
    return hmac.compare_digest(digest.hex(), record["scrypt"])


def app(hydra_admin: str, users: dict[str, dict]) -> FastAPI:
    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    http = httpx.AsyncClient(base_url=hydra_admin, timeout=10.0)

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > 4096:
            return {}
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=10).items()}

    def page(challenge: str, problem: str = "", status: int = 200) -> HTMLResponse:
        shown = f'<p role="alert">{html.escape(problem)}</p>' if problem else ""
        return HTMLResponse(PAGE.format(problem=shown, challenge=html.escape(challenge, quote=True)), status_code=status)

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    async def asked(kind: str, challenge: str) -> dict | None:
        """Hydra's login or consent request for this challenge; None for a missing or unknown one."""
        if not challenge or len(challenge) > 8000:  # Hydra v2 challenges are encrypted flows of ~2 kB
            return None
        answer = await http.get(f"/admin/oauth2/auth/requests/{kind}", params={f"{kind}_challenge": challenge})
        return answer.json() if answer.status_code == 200 else None

    @api.get("/login")
    async def login_page(login_challenge: str = "") -> Response:
        request = await asked("login", login_challenge)
        if request is None:
            return HTMLResponse("unknown or expired sign-in; start again from the portal", status_code=400)
        if request.get("skip"):
            return await accept_login(login_challenge, request["subject"])
        return page(login_challenge)

    async def accept_login(challenge: str, subject: str) -> Response:
        done = await http.put("/admin/oauth2/auth/requests/login/accept", params={"login_challenge": challenge},
                              json={"subject": subject, "remember": False})
        if done.status_code != 200:
            return HTMLResponse("the sign-in could not be completed; start again from the portal", status_code=400)
        return RedirectResponse(done.json()["redirect_to"], status_code=303)

    @api.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request)
        challenge, username = fields.get("challenge", ""), fields.get("username", "")
        record = users.get(username)
        if not challenge or record is None or not password_ok(record, fields.get("password", "")):
            return page(challenge, "用户名或密码错误 / Wrong user name or password", 401)
        return await accept_login(challenge, username)

    @api.get("/consent")
    async def consent(consent_challenge: str = "") -> Response:
        request = await asked("consent", consent_challenge)
        if request is None:
            return HTMLResponse("unknown or expired consent", status_code=400)
        record = users.get(request.get("subject", ""))
        if record is None:
            return HTMLResponse("this person is no longer known", status_code=403)
        done = await http.put("/admin/oauth2/auth/requests/consent/accept",
                              params={"consent_challenge": consent_challenge}, json={
                                  "grant_scope": request.get("requested_scope", []),
                                  "grant_access_token_audience": request.get("requested_access_token_audience", []),
                                  "remember": False,
                                  "session": {"id_token": {"rdx_member": record["member"], "rdx_role": record["role"],
                                                           "name": record["name"]}}})
        if done.status_code != 200:
            return HTMLResponse("the consent could not be completed", status_code=400)
        return RedirectResponse(done.json()["redirect_to"], status_code=303)

    @api.get("/error")
    async def error(error: str = "", error_description: str = "") -> HTMLResponse:
        return HTMLResponse(f"<p>sign-in error: {html.escape(error[:200])}</p>", status_code=400)

    return api


def main() -> None:
    users = json.loads(Path(os.environ["RDX_LOGIN_USERS_FILE"]).read_text())["users"]
    uvicorn.run(app(os.environ["RDX_LOGIN_HYDRA_ADMIN"], users), host="127.0.0.1",
                port=int(os.environ["RDX_LOGIN_PORT"]), log_level="warning")


if __name__ == "__main__":
    main()
