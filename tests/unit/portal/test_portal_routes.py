"""The portal's routes through FastAPI's TestClient: who reaches which page, and what each refuses
before it asks the gateway. The gateway here is an httpx transport that answers the policy in
force (the real default Cedar text, decided by the real Cedar) and records every other call: a
refusal the portal makes itself must not reach it."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common.policy import DEFAULT_POLICY_TEXT
from services.portal.app import Portal
from services.portal.sessions import SESSION_COOKIE, Session
from services.portal.settings import PortalSettings

pytestmark = pytest.mark.unit

ORIGIN = "http://127.0.0.1:8005"


class Site:
    def __init__(self, tmp_path):
        keys = tmp_path / "keys.json"
        keys.write_text(json.dumps({f"{m}/{r}": f"rdx_{m.replace('-', '')}{r[:3]}.secret" for m, r in (
            ("bank", "member_admin"), ("bank", "analyst"), ("bank", "auditor"), ("association", "association_admin"),
            ("association", "auditor"))}))
        keys.chmod(0o600)
        self.calls: list[httpx.Request] = []
        self.answers: dict[str, object] = {"/v1/policy": {"version": 1, "sha256": "", "text": DEFAULT_POLICY_TEXT}}
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.answer))
        self.portal = Portal(PortalSettings(state_root=tmp_path / "state", portal_gateway_keys_file=keys,
                                            portal_public_url=ORIGIN), http=http)
        self.client = TestClient(self.portal.svc.app, base_url=ORIGIN, follow_redirects=False)

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.path in self.answers:
            return httpx.Response(200, json=self.answers[request.url.path])
        self.calls.append(request)
        return httpx.Response(404, json={"title": "Not found"})

    def sign_in(self, member: str, role: str) -> Session:
        s = Session("sub", "Someone", member, role, time.time() + 600)
        self.client.cookies.set(SESSION_COOKIE, self.portal.sessions.put(s))
        return s


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


PAGES = ("/search", "/listings/bank.a", "/keys", "/access", "/jobs", "/jobs/job-1", "/statements",
         "/statements.csv", "/staff/members")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_a_stranger_to_sign_in_and_back(site, path):
    answer = site.client.get(path)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    assert site.calls == []


@pytest.mark.parametrize("path", ("/api/account", "/jobs/job-1/events"))
def test_a_page_script_s_call_without_a_session_is_401(site, path):
    answer = site.client.get(path)
    assert answer.status_code == 401 and "detail" in answer.json()
    assert site.client.post("/api/tx", json={}).status_code == 401
    assert site.calls == []


@pytest.mark.parametrize("role", ("analyst", "auditor"))
def test_only_signing_roles_make_a_browser_key(site, role):
    site.sign_in("bank", role)
    assert site.client.get("/keys").status_code == 403
    site.sign_in("bank", "member_admin")
    assert site.client.get("/keys").status_code == 200


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("bank", "analyst"), ("association", "auditor")))
def test_staff_pages_are_cedar_s_decision(site, member, role):
    site.sign_in(member, role)
    answer = site.client.get("/staff/members")
    assert answer.status_code == 403 and "role=\"alert\"" in answer.text
    assert site.calls == []  # the policy was read, nothing else


def test_a_staff_page_shows_the_gateway_s_refusal_of_the_policy(site):
    del site.answers["/v1/policy"]
    site.sign_in("association", "association_admin")
    assert site.client.get("/staff/members").status_code == 404  # the gateway's answer, as a page
