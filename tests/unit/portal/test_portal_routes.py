"""The portal's routes through FastAPI's TestClient: who reaches which page, and what each refuses
before it asks the gateway. The gateway here is an httpx transport that answers the policy in
force (the real default Cedar text, decided by the real Cedar) and records every other call: a
refusal the portal makes itself must not reach it."""

from __future__ import annotations

import csv
import io
import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from services.common.policy import DEFAULT_POLICY_TEXT
from services.portal.app import Portal
from services.portal.sessions import SESSION_COOKIE, Session
from services.portal.settings import PortalSettings
from services.portal.views import CSP

pytestmark = pytest.mark.unit

ORIGIN = "http://127.0.0.1:8005"


class Site:
    def __init__(self, tmp_path):
        keys = tmp_path / "keys.json"
        keys.write_text(json.dumps({f"{m}/{r}": f"rdx_{m.replace('-', '')}{r[:3]}.secret" for m, r in (
            ("bank", "member_admin"), ("bank", "analyst"), ("bank", "auditor"), ("telco", "member_admin"),
            ("association", "association_admin"), ("association", "auditor"))}))
        keys.chmod(0o600)
        self.calls: list[httpx.Request] = []  # the calls it had no answer for
        self.seen: list[httpx.Request] = []
        self.answers: dict[str, object] = {"/v1/policy": {"version": 1, "sha256": "", "text": DEFAULT_POLICY_TEXT}}
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.answer))
        self.portal = Portal(PortalSettings(state_root=tmp_path / "state", portal_gateway_keys_file=keys,
                                            portal_public_url=ORIGIN), http=http)
        self.client = TestClient(self.portal.svc.app, base_url=ORIGIN, follow_redirects=False)

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        for key in (f"{request.method} {request.url.path}", request.url.path):
            if key in self.answers:
                found = self.answers[key]
                if isinstance(found, httpx.Response):
                    return found
                return httpx.Response(200, json=found(request) if callable(found) else found)
        self.calls.append(request)
        return httpx.Response(404, json={"title": "Not found"})

    def sign_in(self, member: str, role: str) -> Session:
        s = Session("sub", "Someone", member, role, time.time() + 600)
        self.client.cookies.set(SESSION_COOKIE, self.portal.sessions.put(s))
        return s


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


PAGES = ("/search", "/listings/bank.a", "/keys", "/delegates", "/access", "/jobs", "/jobs/job-1", "/statements", "/staff/approvals", "/staff/network",
         "/statements.csv", "/invoices", "/invoices.csv", "/staff/members", "/staff/jobs", "/listing-wizard",
         "/staff/policy", "/staff/reconciliation")


@pytest.mark.parametrize("path", PAGES)
def test_every_page_sends_a_stranger_to_sign_in_and_back(site, path):
    answer = site.client.get(path)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
    assert site.calls == []


@pytest.mark.parametrize("path", ("/api/account", "/jobs/job-1/events", "/api/quote"))
def test_a_page_script_s_call_without_a_session_is_401(site, path):
    answer = site.client.get(path)
    assert answer.status_code == 401 and "detail" in answer.json()
    assert site.client.post("/api/tx", json={}).status_code == 401
    assert site.calls == []


def test_only_signing_roles_make_a_browser_key(site):
    site.sign_in("bank", "auditor")
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


def tx_call(site, s: Session, type_: str, payload: dict, **headers: str) -> httpx.Response:
    tx = {"chain_id": "rdx-local", "nonce": 1, "payload": payload, "sig": "AA==", "signer": s.member, "type": type_}
    return site.client.post("/api/tx", json={"tx": tx}, headers={"x-csrf-token": s.csrf, "origin": ORIGIN, **headers})


RUNNING = {"id": "job-7", "type": "psi", "status": "running", "consumer": "bank", "participants": ["bank", "telco"],
           "submitted_height": 9}


def test_staff_see_running_jobs_each_with_the_kill_switch(site):
    site.answers["/v1/jobs"] = lambda r: [RUNNING] if r.url.params["status"] == "running" else []
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/jobs")
    assert page.status_code == 200 and 'id="job-job-7"' in page.text
    assert 'data-tx="jobs.Abort"' in page.text and "&#34;job&#34;: &#34;job-7&#34;" in page.text
    assert '<dialog id="confirm"' in page.text and "<script>" not in page.text.split("</head>")[1]


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("association", "auditor")))
def test_a_member_s_people_have_no_running_jobs_page(site, member, role):
    site.sign_in(member, role)
    assert site.client.get("/staff/jobs").status_code == 403
    assert site.calls == []


@pytest.mark.parametrize("type_, payload", (("jobs.Abort", {"job": "job-7", "reason": "x"}),
                                            ("assets.Suspend", {"id": "telco.a", "reason": "x"})))
def test_the_kill_switch_is_relayed_only_from_association_staff(site, type_, payload):
    s = site.sign_in("bank", "member_admin")
    answer = tx_call(site, s, type_, payload)
    assert answer.status_code == 403 and "detail" in answer.json()
    s = site.sign_in("association", "association_admin")
    assert tx_call(site, s, type_, payload, **{"x-csrf-token": "wrong"}).status_code == 403
    assert tx_call(site, s, type_, payload, origin="http://evil.example").status_code == 403
    assert site.calls == []
    assert tx_call(site, s, type_, payload).status_code == 404  # relayed: the gateway's answer (here 404)
    assert [c.url.path for c in site.calls] == ["/v1/tx"]


LISTING = {"id": "telco.a", "level": "L3", "provider": {"id": "telco", "name": "Telco"}, "operations": ["psi"],
           "status": "listed", "metadata": {"title": "Phones"}, "commitment": "00", "listed": {"height": 3},
           "versions": [], "price": {"model": "fixed", "amount": 5}}


@pytest.mark.parametrize("member, role, shown", (("association", "association_admin", True),
                                                 ("telco", "member_admin", False), ("bank", "analyst", False)))
def test_the_listing_s_kill_switch_is_shown_to_staff_only(site, member, role, shown):
    site.answers["/v1/listings/telco.a"] = LISTING
    site.answers["/v1/billing/quote"] = {"max_price": 5}
    site.sign_in(member, role)
    page = site.client.get("/listings/telco.a")
    assert page.status_code == 200 and ('id="suspend-listing"' in page.text) == shown
    site.answers["/v1/listings/telco.a"] = {**LISTING, "status": "suspended"}
    assert 'id="suspend-listing"' not in site.client.get("/listings/telco.a").text


INVOICE = {"member": "bank", "since": 0, "until": 1, "listed_charges": 65, "net_paid": 65, "lines": [
    {"job": "job-1", "asset": "telco.a", "provider": "telco", "charge": 40, "height": 7, "time": 1.5},
    {"job": "=HYPERLINK(1)", "asset": "telco.b", "provider": "@telco", "charge": 25, "height": 8, "time": 2.5}]}


def test_invoices_in_both_languages_and_as_csv_without_formulas(site):
    site.answers["/v1/billing/invoices/bank"] = INVOICE
    site.sign_in("bank", "analyst")
    english = site.client.get("/invoices", headers={"accept-language": "en"})
    assert english.status_code == 200 and "Charges listed" in english.text and 'href="/jobs/job-1"' in english.text
    chinese = site.client.get("/invoices", headers={"accept-language": "zh-CN"})
    assert "所列费用合计" in chinese.text and '<html lang="zh-CN">' in chinese.text
    answer = site.client.get("/invoices.csv")
    assert answer.headers["content-disposition"] == 'attachment; filename="invoice-bank.csv"'
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["height", "time", "job", "asset", "provider", "charge"]
    assert rows[2] == ["8", "2.5", "'=HYPERLINK(1)", "telco.b", "'@telco", "25"]


def test_invoices_say_so_when_the_gateway_refuses(site):
    site.sign_in("bank", "analyst")  # the transport answers 404 for the invoice
    assert site.client.get("/invoices").status_code == 404
    assert site.client.get("/invoices.csv").status_code == 404
    assert [c.url.path for c in site.calls] == ["/v1/billing/invoices/bank"] * 2


def test_the_statement_page_lists_its_entries(site):
    site.answers["/v1/billing/statements/bank"] = {"opening_balance": 100, "closing_balance": 60, "entries": [
        {"height": 7, "time": 1.5, "kind": "escrow_hold", "amount": -40, "counterparty": None, "job": "job-1"}]}
    site.sign_in("bank", "analyst")
    page = site.client.get("/statements", headers={"accept-language": "en"})
    assert page.status_code == 200 and '<table id="entries">' in page.text and 'href="/jobs/job-1"' in page.text
    assert 'id="closing">60 credits' in page.text and 'href="/statements.csv"' in page.text


# -- hostile requests: each answered with a page, the portal unchanged ------------------------------
@pytest.mark.parametrize("method, path, status", [
    ("GET", "/listings/a%2Fb", 404), ("GET", "/jobs/..%2F..%2Fkeys", 404), ("GET", "/nothing-here", 404),
    ("GET", "/static/..%2Fviews.py", 404), ("GET", "/logout", 405), ("DELETE", "/search", 405)])
@pytest.mark.parametrize("lang, text", [("en", "There is no such page."), ("zh", "没有这个页面。")])
def test_a_path_or_method_without_a_page_gets_the_error_page(site, method, path, status, lang, text):
    """They were answered with the framework's JSON ({"detail": "Not Found"}), not a page for people."""
    site.client.cookies.set("lang", lang)
    answer = site.client.request(method, path)
    assert answer.status_code == status and answer.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in answer.text and (text if status == 404 else "") in answer.text
    assert answer.headers["content-security-policy"].startswith("default-src 'self'")
    if status == 405:
        assert answer.headers["allow"]
    assert site.calls == []


@pytest.mark.parametrize("path", ["/logout", "/api-keys", "/api-keys/abc/revoke", "/api-keys/abc/rotate"])
def test_a_form_with_more_fields_than_the_parser_takes_is_refused_with_a_page(site, path):
    """More than 20 fields made the form parser raise: a 500 in plain text, from any signed-in person."""
    s = site.sign_in("bank", "member_admin")
    fields = "&".join(f"f{i}=1" for i in range(25)) + f"&csrf={s.csrf}&role=analyst"
    answer = site.client.post(path, content=fields, headers={"content-type": "application/x-www-form-urlencoded",
                                                             "origin": "http://127.0.0.1:8005"})
    assert answer.status_code == 403 and answer.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in answer.text
    assert site.portal.sessions.get(site.client.cookies.get("rdx_portal")) is s  # not signed out
    assert site.calls == []
    answer = site.client.post("/logout", data={"csrf": s.csrf}, headers={"origin": "http://127.0.0.1:8005"})
    assert answer.status_code == 303  # the same form with its few fields works


def test_a_relayed_body_nested_thousands_deep_is_a_400(site):
    """Within the 16 KiB limit, JSON 8000 arrays deep made the parser raise RecursionError: a 500 in plain text."""
    s = site.sign_in("bank", "member_admin")
    body = b'{"tx":' + b"[" * 8000 + b"]" * 8000 + b"}"
    answer = site.client.post("/api/tx", content=body, headers={"x-csrf-token": s.csrf, "origin": ORIGIN,
                                                                "content-type": "application/json"})
    assert answer.status_code == 400 and "detail" in answer.json()
    assert site.calls == []
    assert tx_call(site, s, "access.Request", {"id": "g-1"}).status_code == 404  # the next relay is relayed


@pytest.mark.parametrize("path, answer", [("/access", [{"id": "g-1"}]), ("/jobs/job-1", ["not", "a", "record"])])
def test_a_gateway_answer_of_another_shape_gets_the_error_page_not_a_trace(site, path, answer):
    """It was Starlette's plain-text 500, without the pages' headers."""
    site.answers[f"/v1{path.replace('/access', '/access-requests')}"] = answer
    site.sign_in("bank", "member_admin")
    client = TestClient(site.portal.svc.app, base_url=ORIGIN, follow_redirects=False, raise_server_exceptions=False)
    client.cookies = site.client.cookies
    page = client.get(path)
    assert page.status_code == 500 and page.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in page.text and "Traceback" not in page.text and "KeyError" not in page.text
    assert page.headers["content-security-policy"] == CSP and page.headers["cache-control"] == "no-store"
    assert client.get("/signed-out").status_code == 200
