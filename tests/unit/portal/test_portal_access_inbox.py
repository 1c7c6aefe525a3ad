"""The access inbox's grants the member holds, with their expiry and runs left as the chain records
them (``expires_at``, ``max_runs``, ``runs_used``: services/consensus/access), through FastAPI's
TestClient with the gateway an httpx transport (test_portal_routes.py's Site)."""

from __future__ import annotations

import re

import pytest

from services.portal.views import held_terms
from tests.unit.portal.test_portal_routes import Site

pytestmark = pytest.mark.unit

EXPIRES = 1_796_212_800  # 2026-12-02 12:00:00 UTC


def grant(gid: str, consumer: str, provider: str, status: str, **terms) -> dict:
    return {"id": gid, "asset": f"{provider}.a", "consumer": consumer, "provider": provider, "operations": ["psi"],
            "purpose": "<b>审计</b>", "status": status, "needs": ["provider"], "approvals": [],
            "expires_at": EXPIRES, "max_runs": 5, "runs_used": 2, **terms}


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    s.answers["/v1/access-requests"] = [
        grant("g-held", "bank", "telco", "granted"),
        grant("g-spent", "bank", "telco", "granted", runs_used=5, max_runs=5),
        grant("g-waiting", "bank", "telco", "pending"),
        grant("g-expired", "bank", "telco", "expired"),
        grant("g-given", "telco", "bank", "granted"),  # the member is its provider: it does not hold it
    ]
    return s


def row(page: str, gid: str) -> str:
    found = re.search(rf'<tr id="grant-{gid}">(.*?)</tr>', page, re.S)
    assert found, gid
    return found.group(1)


def cell(page: str, gid: str, cls: str) -> str:
    return re.search(rf'class="{cls}">([^<]*)</td>', row(page, gid)).group(1)


@pytest.mark.parametrize("lang, expires, runs, spent", (
    ("en", "Expires (grants you hold)", "3 of 5", "0 of 5"), ("zh-CN", "到期（您持有的授权）", "3 / 5 次", "0 / 5 次")))
@pytest.mark.parametrize("role", ("member_admin", "analyst"))
def test_grants_held_show_their_expiry_and_runs_left(site, lang, expires, runs, spent, role):
    site.sign_in("bank", role)
    page = site.client.get("/access", headers={"accept-language": lang})
    assert page.status_code == 200 and expires in page.text
    assert cell(page.text, "g-held", "expires") == "2026-12-02 12:00:00 UTC"
    assert cell(page.text, "g-held", "runs-left") == runs
    assert cell(page.text, "g-spent", "runs-left") == spent
    for other in ("g-waiting", "g-expired", "g-given"):  # not held by bank: no terms shown
        assert cell(page.text, other, "expires") == "" and cell(page.text, other, "runs-left") == ""
    assert "<b>审计</b>" not in page.text and "&lt;b&gt;审计&lt;/b&gt;" in page.text
    [call] = [r for r in site.seen if r.url.path == "/v1/access-requests"]
    assert call.headers["authorization"] == f"Bearer rdx_bank{role[:3]}.secret"


def test_the_provider_sees_no_terms_on_grants_it_gave(site):
    site.sign_in("telco", "member_admin")
    page = site.client.get("/access", headers={"accept-language": "en"})
    assert cell(page.text, "g-held", "expires") == "" and cell(page.text, "g-held", "runs-left") == ""
    assert cell(page.text, "g-given", "runs-left") == "3 of 5"  # telco is this one's consumer
    assert 'data-approve="g-waiting"' in page.text  # the provider's approval is still offered
    # and its rejection, with the reason asked in the confirmation dialog; on no other row
    assert page.text.count('data-tx="access.Reject"') == 1
    assert '<button type="button" data-tx="access.Reject" data-payload="{&#34;id&#34;: &#34;g-waiting&#34;}"' in page.text
    assert '<dialog id="confirm"' in page.text


def test_held_terms_take_only_the_chain_s_integers():
    assert held_terms(grant("g", "bank", "telco", "granted"), "bank") == \
        {"expires": "2026-12-02 12:00:00 UTC", "left": 3, "max": 5}
    assert held_terms(grant("g", "bank", "telco", "granted", runs_used=7), "bank")["left"] == 0
    for bad in ({"expires_at": None}, {"max_runs": "5"}, {"runs_used": True}):
        assert held_terms(grant("g", "bank", "telco", "granted", **bad), "bank") is None
    far = held_terms(grant("g", "bank", "telco", "granted", expires_at=10**20), "bank")
    assert far["expires"] == str(10**20)
    assert held_terms(grant("g", "bank", "telco", "revoked"), "bank") is None
    assert held_terms(grant("g", "bank", "telco", "granted"), "telco") is None
