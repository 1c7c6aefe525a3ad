"""The API keys page through the TestClient: who may use it, what each change must carry, and that the
portal's own key cannot be revoked from it. The gateway is the recording transport of test_portal_routes."""

from __future__ import annotations

import httpx
import pytest

from tests.unit.portal.test_portal_routes import ORIGIN, Site

pytestmark = pytest.mark.unit

KEYS = [{"key_id": "ab12", "member": "bank", "role": "analyst", "created_at": 1.0e9, "revoked_at": None},
        {"key_id": "bankmem", "member": "bank", "role": "member_admin", "created_at": 1.0e9, "revoked_at": None},
        {"key_id": "old1", "member": "bank", "role": "auditor", "created_at": 0.9e9, "revoked_at": 1.1e9}]
MADE = {"key_id": "cd34", "member": "bank", "role": "analyst", "created_at": 1.2e9, "revoked_at": None,
        "token": "rdx_cd34.the-secret-shown-once"}


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    site.answers.update({"GET /v1/keys": KEYS, "POST /v1/keys": httpx.Response(201, json=MADE),
                         "POST /v1/keys/ab12/rotate": httpx.Response(201, json=MADE),
                         "DELETE /v1/keys/ab12": httpx.Response(204)})  # as the gateway answers
    return site


def form(site, path: str, csrf: str | None, **fields: str):
    data = {**({"csrf": csrf} if csrf is not None else {}), **fields}
    return site.client.post(path, data=data, headers={"origin": ORIGIN})


def test_a_member_admin_lists_makes_rotates_and_revokes(site):
    s = site.sign_in("bank", "member_admin")
    page = site.client.get("/api-keys", headers={"accept-language": "en"})
    assert page.status_code == 200 and 'id="key-ab12"' in page.text and 'id="new-token"' not in page.text
    # the portal's own key (rdx_bankmem.… in its keys file) has no buttons
    assert "this portal&#39;s own key" in page.text and 'action="/api-keys/bankmem/revoke"' not in page.text
    made = form(site, "/api-keys", s.csrf, role="analyst")
    assert made.status_code == 201 and "rdx_cd34.the-secret-shown-once" in made.text
    assert made.headers["cache-control"] == "no-store"
    assert [r.read() for r in site.seen if r.method == "POST"] == [b'{"member":"bank","role":"analyst"}']
    assert "the-secret-shown-once" not in site.client.get("/api-keys").text  # shown once
    rotated = form(site, "/api-keys/ab12/rotate", s.csrf)
    assert rotated.status_code == 201 and "rdx_cd34.the-secret-shown-once" in rotated.text
    revoked = form(site, "/api-keys/ab12/revoke", s.csrf)
    assert revoked.status_code == 303 and revoked.headers["location"] == "/api-keys"
    assert [f"{r.method} {r.url.path}" for r in site.seen if r.method != "GET"] == [
        "POST /v1/keys", "POST /v1/keys/ab12/rotate", "DELETE /v1/keys/ab12"]
    assert site.calls == []


@pytest.mark.parametrize("member, role", (("bank", "analyst"), ("bank", "auditor"),
                                          ("association", "association_admin")))
def test_only_a_member_admin_has_the_page(site, member, role):
    s = site.sign_in(member, role)
    assert site.client.get("/api-keys").status_code == 403
    assert form(site, "/api-keys", s.csrf, role="analyst").status_code == 403
    assert form(site, "/api-keys/ab12/revoke", s.csrf).status_code == 403
    assert site.seen == []


def test_changes_need_the_session_s_token_from_this_origin_in_a_small_form(site):
    s = site.sign_in("bank", "member_admin")
    assert form(site, "/api-keys", None, role="analyst").status_code == 403
    assert form(site, "/api-keys", "wrong", role="analyst").status_code == 403
    assert site.client.post("/api-keys", data={"csrf": s.csrf, "role": "analyst"},
                            headers={"origin": "http://evil.example"}).status_code == 403
    assert form(site, "/api-keys", s.csrf, role="analyst", padding="x" * 5000).status_code == 403
    assert site.client.post("/api-keys", content=b"\xff" * 100, headers={
        "origin": ORIGIN, "content-type": "application/x-www-form-urlencoded"}).status_code == 403
    assert site.client.post("/api-keys", json={"csrf": s.csrf, "role": "analyst"},
                            headers={"origin": ORIGIN}).status_code == 403
    assert site.seen == []


@pytest.mark.parametrize("path", ("/api-keys/AB12/revoke", "/api-keys/" + "a" * 41 + "/revoke",
                                  "/api-keys/ab-12/rotate", "/api-keys/ab12/delete", "/api-keys/ab12%0A/revoke"))
def test_a_bad_key_id_or_change_is_404(site, path):
    s = site.sign_in("bank", "member_admin")
    assert form(site, path, s.csrf).status_code == 404
    assert site.seen == []


@pytest.mark.parametrize("role", ("association_admin", "member", "x" * 500, ""))
def test_a_role_a_member_admin_may_not_issue_is_400(site, role):
    s = site.sign_in("bank", "member_admin")
    assert form(site, "/api-keys", s.csrf, role=role).status_code == 400
    assert site.seen == []


@pytest.mark.parametrize("change", ("revoke", "rotate"))
def test_the_portal_s_own_key_cannot_be_changed_from_the_page(site, change):
    s = site.sign_in("bank", "member_admin")
    answer = site.client.post(f"/api-keys/bankmem/{change}", data={"csrf": s.csrf},
                              headers={"origin": ORIGIN, "accept-language": "en"})
    assert answer.status_code == 403 and "only the association changes it" in answer.text
    assert site.seen == []
