"""The portal's HTTP surface as a hostile person or outsider sends to it, in-process (FastAPI's
TestClient; the gateway an httpx transport, as tests/unit/portal/test_portal_routes.py builds it)."""

from __future__ import annotations

import pytest
from test_portal_routes import Site

pytestmark = pytest.mark.unit


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


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
