"""The listing wizard and the policy versions page, through FastAPI's TestClient (the gateway an httpx
transport, as in test_portal_routes.py): who reaches them, the draft the wizard sends to the gateway's
draft validation, every problem shown at its field (escaped), a valid draft offered for signing
(assets.List relayed from a member admin only), the versions listed and two of them compared
(difflib, escaped), and governance.PublishPolicy relayed from association staff only."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.listing import example_metadata
from services.portal.views import policy_diff, problems_by_field, wizard_draft, wizard_form_of
from tests.unit.portal.test_portal_routes import ORIGIN, Site, tx_call

pytestmark = pytest.mark.unit

MEMBERS = [{"id": "association", "name": "Assoc", "roles": ["association"], "status": "active"},
           {"id": "bank", "name": "Bank", "roles": ["consumer"], "status": "active"},
           {"id": "telco", "name": "Telco", "roles": ["provider"], "status": "active"}]
FORM = {"asset_id": "telco.subs", "level": "L2", "operations": ["psi", "aggregation"], "commitment": "AB" * 32,
        "price_model": "subscription", "amount": "40", "period_days": "30", "min_group_size": "5",
        "title": "用户 subscribers", "description": "line one\r\nline two", "industry": "telecom, finance",
        "tags": "", "region": "CN-GD", "data_start": "2021-01-01", "update_cycle": "monthly",
        "last_updated": "2025-06-30", "row_count": "1200", "licence": "CC-BY-4.0", "licence_url": "",
        "usage_terms": "PSI only.", "contact": "",
        "columns": "phone_hash | string | identifier | key | salted hash\r\n\r\ndistrict|category|internal\r\nbad"}


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    s.answers["/v1/members"] = MEMBERS
    return s


def post_form(site, s, form: dict, **headers) -> httpx.Response:
    body = httpx.QueryParams({**form, "csrf": s.csrf} if s is not None else form)
    return site.client.post("/listing-wizard", content=str(body), headers={
        "content-type": "application/x-www-form-urlencoded", "origin": ORIGIN, **headers})


def test_the_draft_is_the_form_as_typed_and_the_catalog_judges_it():
    draft = wizard_draft({k: v if isinstance(v, list) else [v] for k, v in FORM.items()})
    assert draft == {
        "id": "telco.subs", "level": "L2", "operations": ["psi", "aggregation"], "commitment": "ab" * 32,
        "price": {"model": "subscription", "amount": 40, "period_s": 30 * 86400}, "min_group_size": 5,
        "metadata": {"title": "用户 subscribers", "description": "line one\nline two", "industry": ["telecom", "finance"],
                     "tags": [], "region": "CN-GD", "data_start": "2021-01-01", "update_cycle": "monthly",
                     "last_updated": "2025-06-30", "row_count": 1200, "licence": "CC-BY-4.0", "usage_terms": "PSI only.",
                     "columns": [{"name": "phone_hash", "type": "string", "sensitivity": "identifier", "join_key": True,
                                  "description": "salted hash"},
                                 {"name": "district", "type": "category", "sensitivity": "internal", "join_key": False},
                                 {"name": "bad", "join_key": False}]}}
    # not digits: passed on as typed, for the catalog to explain
    odd = wizard_draft({"row_count": ["12k"], "amount": ["-3"], "period_days": ["x"], "operations": []})
    assert odd["metadata"]["row_count"] == "12k" and odd["price"] == {"model": "", "amount": "-3", "period_s": "x"}


def test_each_problem_lands_at_its_field():
    shown = problems_by_field([
        {"field": "id", "message": "taken"}, {"field": "operations[1]", "message": "never on L3"},
        {"field": "price.period_s", "message": "only a subscription"}, {"field": "metadata.columns[2].type", "message": "is required"},
        {"field": "metadata.columns", "message": "too short"}, {"field": "metadata.industry[0]", "message": "slug"},
        {"field": "metadata.sample", "message": "L1 or L2 only"}, {"field": "payload", "message": "whole"},
        {"field": "metadata.title", "message": "blank"}])
    assert shown == {"asset_id": ["taken"], "operations": ["never on L3"], "period_days": ["only a subscription"],
                     "columns": ["3.type: is required", "too short"], "industry": ["slug"], "title": ["blank"],
                     "listing": ["metadata.sample: L1 or L2 only", "whole"]}


@pytest.mark.parametrize("lang, title, hint", (("en", "List a dataset", "One per line: name | type"),
                                               ("zh-CN", "发布数据产品", "每行一个：名称 | 类型")))
def test_a_provider_s_admin_gets_the_wizard_in_both_languages(site, lang, title, hint):
    site.sign_in("telco", "member_admin")
    page = site.client.get("/listing-wizard", headers={"accept-language": lang})
    assert page.status_code == 200 and title in page.text and hint in page.text
    for name in ("asset_id", "level", "operations", "commitment", "price_model", "amount", "period_days", "title",
                 "description", "industry", "region", "data_start", "update_cycle", "last_updated", "row_count",
                 "columns", "licence", "usage_terms", "csrf"):
        assert f'name="{name}"' in page.text, name
    assert 'href="/listing-wizard"' in page.text and "publish-listing" not in page.text
    assert site.calls == []


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("telco", "analyst"), ("association", "association_admin"),
                                          ("telco", "auditor")))
def test_no_one_else_gets_the_wizard(site, member, role):
    site.sign_in(member, role)
    assert site.client.get("/listing-wizard").status_code == 403
    s = site.sign_in(member, role)
    assert post_form(site, s, FORM).status_code == 403
    assert not [r for r in site.seen if r.url.path == "/v1/drafts/validate"]


def test_the_wizard_refuses_a_forged_or_oversized_form_before_the_gateway(site):
    s = site.sign_in("telco", "member_admin")
    assert post_form(site, None, FORM).status_code == 403  # no CSRF token
    assert post_form(site, None, {**FORM, "csrf": "wrong"}).status_code == 403
    assert post_form(site, s, FORM, origin="http://evil.example").status_code == 403
    assert post_form(site, s, {**FORM, "description": "x" * 20_000}).status_code == 413
    assert site.client.post("/listing-wizard", json=FORM, headers={"origin": ORIGIN}).status_code == 400
    assert post_form(site, s, {**FORM, **{f"f{i}": "1" for i in range(40)}}).status_code == 400  # too many fields
    assert not [r for r in site.seen if r.url.path == "/v1/drafts/validate"]


def test_every_problem_is_shown_at_its_field_escaped(site):
    site.answers["POST /v1/drafts/validate"] = {"valid": False, "payload": None, "approvals": {}, "policy_version": 1,
                                                "problems": [{"field": "metadata.title", "message": "<script>x</script>"},
                                                             {"field": "metadata.columns[2].type", "message": "is required"},
                                                             {"field": "id", "message": "telco.subs is already a listing"}]}
    s = site.sign_in("telco", "member_admin")
    page = post_form(site, s, FORM, **{"accept-language": "en"})
    assert page.status_code == 422 and "3 problem(s) to fix" in page.text
    assert '<ul class="problem" id="problem-title"><li>&lt;script&gt;x&lt;/script&gt;</li></ul>' in page.text
    assert '<ul class="problem" id="problem-columns"><li>3.type: is required</li></ul>' in page.text
    assert 'id="problem-asset_id"' in page.text and 'aria-invalid="true"' in page.text
    assert "<script>x" not in page.text and "publish-listing" not in page.text
    assert 'value="用户 subscribers"' in page.text  # the form keeps what was typed
    [call] = [r for r in site.seen if r.url.path == "/v1/drafts/validate"]
    assert call.headers["authorization"] == "Bearer rdx_telcomem.secret"
    sent = json.loads(call.content)
    assert sent["type"] == "assets.List" and set(sent) == {"type", "listing"} and sent["listing"] == wizard_draft(
        {k: v if isinstance(v, list) else [v] for k, v in FORM.items()})


def test_a_valid_draft_is_offered_for_signing_as_the_catalog_gave_it(site):
    payload = {"id": "telco.subs", "level": "L2", "operations": ["aggregation", "psi"], "commitment": "ab" * 32,
               "price": {"model": "fixed", "amount": 40}, "min_group_size": 5, "metadata": {"title": "</p><b>"}}
    site.answers["POST /v1/drafts/validate"] = {"valid": True, "problems": [], "payload": payload, "policy_version": 1,
                                                "approvals": {"psi": ["provider"], "aggregation": []}}
    s = site.sign_in("telco", "member_admin")
    page = post_form(site, s, FORM, **{"accept-language": "zh-CN"})
    assert page.status_code == 200 and "草稿已通过校验" in page.text and 'id="publish-listing"' in page.text
    attr = page.text.split('data-payload="')[1].split('"')[0]
    assert "<b>" not in attr and json.loads(attr.replace("&#34;", '"').replace("&lt;", "<").replace("&gt;", ">")
                                            .replace("&amp;", "&").replace("&#39;", "'")) == payload
    assert 'data-account="telco"' in page.text and '<dialog id="ask"' in page.text
    assert "psi: provider" in page.text and "aggregation: 无需审批" in page.text


def test_assets_list_is_relayed_from_a_member_admin_only(site):
    listing = {"id": "telco.subs", "level": "L2"}
    for member, role in (("telco", "analyst"), ("association", "association_admin"), ("telco", "auditor")):
        assert tx_call(site, site.sign_in(member, role), "assets.List", listing).status_code == 403
    assert site.calls == []
    assert tx_call(site, site.sign_in("telco", "member_admin"), "assets.List", listing).status_code == 404  # relayed
    [call] = site.calls
    assert call.url.path == "/v1/tx" and json.loads(call.content)["tx"]["type"] == "assets.List"


LISTED = {"id": "telco.subs", "status": "listed", "provider": {"id": "telco", "name": "Telco"}, "level": "L3",
          "listed": {"height": 3, "tx_hash": "AB" * 32}, "versions": [],
          "operations": ["aggregation", "psi"], "commitment": "ab" * 32, "min_group_size": 5,
          "price": {"model": "subscription", "amount": 40, "period_s": 30 * 86400},
          "metadata": {**example_metadata("用户 <b>画像</b>", contact="data@telco.example",
                                          licence_url="https://telco.example/licence"), "metadata_version": 1}}


def test_a_listing_s_form_drafts_the_same_listing_again():
    draft = wizard_draft(wizard_form_of(LISTED))
    assert {k: draft[k] for k in ("id", "level", "operations", "commitment", "price", "min_group_size")} == \
        {k: LISTED[k] for k in ("id", "level", "operations", "commitment", "price", "min_group_size")}
    assert draft["metadata"] == {k: v for k, v in LISTED["metadata"].items() if k != "metadata_version"}


def test_the_owner_s_admin_drafts_its_listing_s_next_version(site):
    site.answers["/v1/listings/telco.subs"] = LISTED
    s = site.sign_in("telco", "member_admin")
    page = site.client.get("/listing-wizard?asset=telco.subs", headers={"accept-language": "en"})
    assert page.status_code == 200 and "Update a listing" in page.text and 'id="updating"' in page.text
    assert '<input type="hidden" name="type" value="assets.Update">' in page.text
    assert 'value="用户 &lt;b&gt;画像&lt;/b&gt;"' in page.text and "readonly" in page.text
    assert 'id="w-op-psi" checked' in page.text and 'id="w-op-raw_download" checked' not in page.text
    site.answers["POST /v1/drafts/validate"] = {"valid": True, "problems": [], "payload": {"id": "telco.subs"},
                                                "approvals": {}, "policy_version": 1}
    form = {k: v for k, v in wizard_form_of(LISTED).items()}
    page = post_form(site, s, {**{k: v[0] for k, v in form.items() if k != "operations"},
                               "operations": form["operations"], "type": "assets.Update"})
    assert page.status_code == 200 and 'data-tx-type="assets.Update"' in page.text
    [call] = [r for r in site.seen if r.url.path == "/v1/drafts/validate"]
    sent = json.loads(call.content)
    assert sent["type"] == "assets.Update" and sent["listing"] == wizard_draft(wizard_form_of(LISTED))
    assert post_form(site, s, {**FORM, "type": "assets.Delist"}).status_code == 400
    # the listing's page links its owner's admin to it, and no one else
    for member, role, linked in (("telco", "member_admin", True), ("bank", "member_admin", False)):
        site.sign_in(member, role)
        page = site.client.get("/listings/telco.subs")
        assert page.status_code == 200 and ('id="update-listing"' in page.text) is linked, (member, role)


def test_no_one_drafts_another_member_s_listing(site):
    site.answers["/v1/listings/telco.subs"] = {**LISTED, "provider": {"id": "shop", "name": "Shop"}}
    site.sign_in("telco", "member_admin")
    assert site.client.get("/listing-wizard?asset=telco.subs").status_code == 403
    assert site.client.get("/listing-wizard?asset=../keys").status_code == 404
    assert site.client.get("/listing-wizard?asset=telco.none").status_code == 404  # the gateway's 404
    site.answers["/v1/listings/telco.subs"] = {**LISTED, "metadata": {**LISTED["metadata"], "sample": {
        "kind": "synthetic", "rows": [{"district": "天河"}]}}}
    page = site.client.get("/listing-wizard?asset=telco.subs", headers={"accept-language": "en"})
    assert page.status_code == 409 and "has a sample" in page.text and 'id="wizard"' not in page.text


ON_CHAIN = {"id": "telco.subs", "owner": "telco", "version": 2, "status": "listed", "level": "L3",
            "privacy_budget": {"epsilon_milli": 2500, "period_s": 86400}}


def update_form() -> dict:
    form = wizard_form_of(LISTED)
    return {**{k: v[0] for k, v in form.items() if k != "operations"}, "operations": form["operations"],
            "type": "assets.Update"}


@pytest.mark.parametrize("lang, shown", (("en", "ε × 1000 = 2500 per consumer per 86400 s"),
                                         ("zh-CN", "每个使用方每 86400 秒 ε × 1000 = 2500")))
def test_a_listing_s_next_version_keeps_its_privacy_budget_from_the_chain(site, lang, shown):
    """assets.Update replaces every field and the catalog does not show the budget: the wizard reads the
    chain's record through the gateway and carries its privacy_budget over unchanged, never from the form."""
    site.answers["/v1/listings/telco.subs"] = LISTED
    site.answers["/v1/assets/telco.subs"] = ON_CHAIN
    s = site.sign_in("telco", "member_admin")
    page = site.client.get("/listing-wizard?asset=telco.subs", headers={"accept-language": lang})
    assert page.status_code == 200 and 'id="kept-budget"' in page.text and shown in page.text
    site.answers["POST /v1/drafts/validate"] = {"valid": True, "problems": [], "payload": {"id": "telco.subs"},
                                                "approvals": {}, "policy_version": 1}
    forged = {**update_form(), "privacy_budget": '{"epsilon_milli": 1}', "epsilon_milli": "1"}
    page = post_form(site, s, forged, **{"accept-language": lang})
    assert page.status_code == 200 and shown in page.text
    [call] = [r for r in site.seen if r.url.path == "/v1/drafts/validate"]
    sent = json.loads(call.content)
    assert sent["listing"] == {**wizard_draft(wizard_form_of(LISTED)), "privacy_budget": ON_CHAIN["privacy_budget"]}
    # a new listing's draft does not ask the chain, nor carry a budget
    site.seen.clear()
    post_form(site, s, {**update_form(), "type": "assets.List"})
    assert [r.url.path for r in site.seen if r.url.path.startswith("/v1/assets")] == []
    [call] = [r for r in site.seen if r.url.path == "/v1/drafts/validate"]
    assert "privacy_budget" not in json.loads(call.content)["listing"]


def test_a_listing_without_a_budget_or_not_the_member_s_is_drafted_without_one(site):
    site.answers["POST /v1/drafts/validate"] = {"valid": False, "problems": [{"field": "id", "message": "no"}],
                                                "payload": None, "approvals": {}, "policy_version": 1}
    s = site.sign_in("telco", "member_admin")
    for record in ({**ON_CHAIN, "privacy_budget": None}, {k: v for k, v in ON_CHAIN.items() if k != "privacy_budget"},
                   httpx.Response(403, json={"title": "Forbidden"}), httpx.Response(404, json={"title": "Not found"})):
        site.answers["/v1/assets/telco.subs"] = record
        site.seen.clear()
        assert post_form(site, s, update_form()).status_code == 422  # the catalog's verdict, shown
        [call] = [r for r in site.seen if r.url.path == "/v1/drafts/validate"]
        assert "privacy_budget" not in json.loads(call.content)["listing"]
    # the gateway cannot say: nothing is drafted (a version made now could drop a budget)
    site.answers["/v1/assets/telco.subs"] = httpx.Response(503, json={"title": "Chain unavailable"})
    site.seen.clear()
    assert post_form(site, s, update_form()).status_code == 503
    assert [r.url.path for r in site.seen if r.url.path == "/v1/drafts/validate"] == []
    site.answers["/v1/listings/telco.subs"] = LISTED
    assert site.client.get("/listing-wizard?asset=telco.subs").status_code == 503


def test_assets_update_is_relayed_from_a_member_admin_only(site):
    listing = {"id": "telco.subs", "level": "L2"}
    for member, role in (("telco", "analyst"), ("association", "association_admin")):
        assert tx_call(site, site.sign_in(member, role), "assets.Update", listing).status_code == 403
    assert site.calls == []
    assert tx_call(site, site.sign_in("telco", "member_admin"), "assets.Update", listing).status_code == 404  # relayed
    assert [c.url.path for c in site.calls] == ["/v1/tx"]


V1 = "permit (principal, action, resource)\nwhen { true };\n"
V2 = V1 + "// <script>alert(1)</script>\n"
V3 = V2.replace("true", "principal.role == \"member_admin\"")


def with_versions(site):
    site.answers["/v1/policy/versions"] = [{"version": v, "sha256": f"{v:064x}", "height": h, "text": None}
                                           for v, h in ((1, 0), (2, 40), (3, 77))]
    texts = {1: V1, 2: V2, 3: V3}
    for v, text in texts.items():
        site.answers[f"/v1/policy/versions/{v}"] = {"version": v, "sha256": f"{v:064x}", "height": 0, "text": text}


def test_staff_see_the_versions_and_the_latest_change(site):
    with_versions(site)
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/policy", headers={"accept-language": "en"})
    assert page.status_code == 200 and "Policy versions" in page.text
    assert all(f'id="version-{v}"' in page.text for v in (1, 2, 3)) and "3 (in force)" in page.text
    assert "From version 2 to version 3" in page.text
    assert '<span class="del">-when { true };</span>' in page.text
    assert '<span class="add">+when { principal.role == &#34;member_admin&#34; };</span>' in page.text
    assert 'data-version="4"' in page.text and "<script>alert" not in page.text
    assert "版本 4" in site.client.get("/staff/policy", headers={"accept-language": "zh-CN"}).text
    page = site.client.get("/staff/policy?a=1&b=2")
    assert '<span class="add">+// &lt;script&gt;alert(1)&lt;/script&gt;</span>' in page.text
    assert 'id="no-diff"' in site.client.get("/staff/policy?a=2&b=2").text
    for bad in ("a=9", "b=x", "a=-1", "a=1e3", "b=" + "9" * 13):
        assert site.client.get(f"/staff/policy?{bad}").status_code == 400, bad
    assert site.calls == []


def test_the_diff_is_difflib_s():
    assert policy_diff("a\nb\n", "a\nc\n") == [("at", "@@ -1,2 +1,2 @@"), ("same", " a"), ("del", "-b"), ("add", "+c")]
    assert policy_diff("same", "same") == []


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("association", "auditor"), ("bank", "analyst")))
def test_only_staff_see_the_policy_versions(site, member, role):
    with_versions(site)
    site.sign_in(member, role)
    assert site.client.get("/staff/policy").status_code == 403
    assert not [r for r in site.seen if r.url.path.startswith("/v1/policy/versions")]


def test_publish_policy_is_relayed_from_association_staff_only(site):
    payload = {"version": 4, "text": V3}
    for member, role in (("bank", "member_admin"), ("association", "auditor")):
        assert tx_call(site, site.sign_in(member, role), "governance.PublishPolicy", payload).status_code == 403
    assert site.calls == []
    assert tx_call(site, site.sign_in("association", "association_admin"), "governance.PublishPolicy",
                   payload).status_code == 404  # relayed: the gateway's answer here
    assert [c.url.path for c in site.calls] == ["/v1/tx"]
