"""The association staff's billing reconciliation page (/staff/reconciliation) through FastAPI's
TestClient, the gateway an httpx transport (test_portal_routes.py's Site) answering as the gateway's
``GET /v1/billing/reconciliation`` does: ``equal``, ``differences`` and ``checked_at``."""

from __future__ import annotations

import httpx
import pytest

from tests.unit.portal.test_portal_routes import Site

pytestmark = pytest.mark.unit

CHECKED = 1_796_212_800.25  # 2026-12-02 12:00:00 UTC
ROUTE = "/v1/billing/reconciliation"


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


@pytest.mark.parametrize("lang, equal_text", (("en", "No differences: the billing read model equals the chain."),
                                              ("zh-CN", "无差异：计费读模型与链上一致。")))
def test_staff_see_when_it_ran_and_that_it_is_equal(site, lang, equal_text):
    site.answers[ROUTE] = {"equal": True, "differences": [], "checked_at": CHECKED}
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/reconciliation", headers={"accept-language": lang})
    assert page.status_code == 200 and equal_text in page.text and 'id="equal"' in page.text
    assert "2026-12-02 12:00:00 UTC" in page.text and 'id="differences"' not in page.text
    assert 'href="/staff/reconciliation"' in page.text  # in the staff's navigation
    [call] = [r for r in site.seen if r.url.path == ROUTE]
    assert call.headers["authorization"] == "Bearer rdx_associationass.secret"


@pytest.mark.parametrize("lang, heading", (("en", "Differences found: 2"), ("zh-CN", "发现差异：2 处")))
def test_staff_see_each_difference_escaped(site, lang, heading):
    site.answers[ROUTE] = {"equal": False, "checked_at": CHECKED, "differences": [
        "balance of bank: chain 1000, billing 1007", "escrow of job <script>x</script>: chain 0, billing 5"]}
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/reconciliation", headers={"accept-language": lang})
    assert page.status_code == 200 and heading in page.text and 'id="equal"' not in page.text
    assert "<li>balance of bank: chain 1000, billing 1007</li>" in page.text
    assert "<script>x</script>" not in page.text and "&lt;script&gt;x&lt;/script&gt;" in page.text


def test_an_answer_that_says_equal_with_differences_shows_them(site):
    site.answers[ROUTE] = {"equal": True, "differences": ["credit supply: chain 5, billing 6"], "checked_at": "soon"}
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/reconciliation", headers={"accept-language": "en"})
    assert 'id="equal"' not in page.text and "credit supply: chain 5, billing 6" in page.text
    assert "at ?." in page.text  # a time that is not one is not shown as one


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("bank", "analyst"), ("association", "auditor")))
def test_only_staff_see_the_reconciliation(site, member, role):
    site.answers[ROUTE] = {"equal": True, "differences": [], "checked_at": CHECKED}
    site.sign_in(member, role)
    page = site.client.get("/staff/reconciliation")
    assert page.status_code == 403
    assert [r.url.path for r in site.seen] == ["/v1/policy"]  # the policy was read, billing was not asked


def test_the_gateway_s_refusal_is_shown_as_a_page(site):
    site.answers[ROUTE] = httpx.Response(503, json={"title": "Upstream unavailable"})
    site.sign_in("association", "association_admin")
    assert site.client.get("/staff/reconciliation").status_code == 503
