"""Delegated keys in the portal, through FastAPI's TestClient (the gateway an httpx transport, as in
test_portal_routes.py): the relay takes a tx signed by one of the session member's delegates only for
the types a delegate may sign and only from its analysts; an analyst makes a key for an account it
names; the member admin's page lists the member's delegates; the analyst's jobs form signs with one."""

from __future__ import annotations

import time

import pytest

from tests.unit.portal.test_portal_routes import ORIGIN, Site

pytestmark = pytest.mark.unit

ANALYST_ACCOUNT = "bank.delegate-lina"


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def send(site, s, signer: str, type_: str, payload: dict | None = None):
    tx = {"chain_id": "rdx-local", "nonce": 1, "payload": payload or {}, "sig": "AA==", "signer": signer, "type": type_}
    return site.client.post("/api/tx", json={"tx": tx}, headers={"x-csrf-token": s.csrf, "origin": ORIGIN})


@pytest.mark.parametrize("type_, path", (("jobs.Submit", "/v1/jobs"), ("access.Request", "/v1/access-requests")))
def test_an_analyst_s_tx_signed_by_its_member_s_delegate_is_relayed(site, type_, path):
    s = site.sign_in("bank", "analyst")
    assert send(site, s, ANALYST_ACCOUNT, type_).status_code == 404  # relayed: the gateway's answer (here 404)
    assert [c.url.path for c in site.calls] == [path]
    assert site.calls[0].headers["authorization"] == "Bearer rdx_bankana.secret"  # as the member's analyst


@pytest.mark.parametrize("signer", ("telco.delegate-lina", "bankx.delegate-lina", "telco"))
def test_another_member_s_delegate_is_refused(site, signer):
    s = site.sign_in("bank", "analyst")
    answer = send(site, s, signer, "jobs.Submit")
    assert answer.status_code == 400 and "detail" in answer.json()
    assert site.calls == []


@pytest.mark.parametrize("type_, status", (("access.Approve", 403), ("members.Delegate", 403),
                                           ("members.Undelegate", 403), ("members.Suspend", 403),
                                           ("members.Register", 403), ("members.RotateKey", 400)))
def test_a_delegate_may_send_only_jobs_and_access_requests(site, type_, status):
    s = site.sign_in("bank", "analyst")
    assert send(site, s, ANALYST_ACCOUNT, type_, {"id": "g-1"}).status_code == status
    s = site.sign_in("bank", "member_admin")  # nor from the member admin's session
    assert send(site, s, ANALYST_ACCOUNT, type_, {"id": "g-1"}).status_code == status
    assert site.calls == []


@pytest.mark.parametrize("signer", (
    "bank.delegate-", "bank.delegate-Lina", "bank.delegate--x", "bank.delegate-a/../x", "bank.delegate-a.b",
    "bank.delegate-" + "a" * 24, "bank.node", "bank.board-x", "bank.delegate-lina ", "", None, 7, ["bank"]))
def test_a_malformed_account_name_is_refused(site, signer):
    s = site.sign_in("bank", "analyst")
    assert send(site, s, signer, "jobs.Submit").status_code == 400
    assert site.client.get("/api/account", params={"account": str(signer)}).status_code == 400
    assert site.calls == []


def test_the_account_id_is_at_most_64_characters(site):
    member = "m" * 40
    s = site.sign_in(member, "analyst")
    assert send(site, s, f"{member}.delegate-" + "a" * 15, "jobs.Submit").status_code == 400  # 65
    assert send(site, s, f"{member}.delegate-" + "a" * 14, "jobs.Submit").status_code == 503  # 64: no gateway key


def test_roles_and_signers_do_not_mix(site):
    s = site.sign_in("bank", "analyst")
    assert send(site, s, "bank", "jobs.Submit").status_code == 403  # the member's own key is its admin's
    s = site.sign_in("bank", "member_admin")
    assert send(site, s, ANALYST_ACCOUNT, "jobs.Submit").status_code == 403  # a delegate's key is an analyst's
    for type_ in ("members.Delegate", "members.Undelegate"):
        assert send(site, s, "bank", type_, {"account": ANALYST_ACCOUNT}).status_code == 404  # relayed
    assert [c.url.path for c in site.calls] == ["/v1/tx", "/v1/tx"]
    s = site.sign_in("bank", "analyst")
    assert send(site, s, "bank", "members.Delegate").status_code == 403


def test_the_account_a_browser_signs_for_is_the_member_s_or_its_delegate_s(site):
    site.answers["/v1/accounts/bank.delegate-lina"] = {"id": ANALYST_ACCOUNT, "nonce": 3}
    site.answers["/v1/accounts/bank"] = {"id": "bank", "nonce": 9}
    site.sign_in("bank", "analyst")
    assert site.client.get("/api/account", params={"account": ANALYST_ACCOUNT}).json()["nonce"] == 3
    assert site.client.get("/api/account").json()["nonce"] == 9
    assert site.client.get("/api/account", params={"account": "telco.delegate-lina"}).status_code == 400


def test_an_analyst_names_the_account_of_its_key(site):
    site.sign_in("bank", "analyst")
    page = site.client.get("/keys", headers={"accept-language": "en"})
    assert page.status_code == 200 and 'id="label-form"' in page.text and 'id="browser-key"' not in page.text
    page = site.client.get("/keys", params={"label": "lina"})
    assert page.status_code == 200 and f'data-account="{ANALYST_ACCOUNT}"' in page.text
    assert f'<code id="account-name" class="hash">{ANALYST_ACCOUNT}</code>' in page.text
    for bad in ("Lina", "-x", "a" * 24, "a/b", "", "<script>"):
        page = site.client.get("/keys", params={"label": bad})
        assert page.status_code == 400 and 'id="label-problem"' in page.text and 'id="browser-key"' not in page.text
        assert "<script>" not in page.text.split("</head>")[1]
    site.sign_in("bank", "member_admin")  # an admin's key is the member's own, whatever the label
    assert 'data-account="bank"' in site.client.get("/keys", params={"label": "lina"}).text
    assert site.calls == []


DELEGATES = [
    {"id": ANALYST_ACCOUNT, "label": "lina", "public_key": "A" * 43 + "=", "powers": ["jobs.Submit"],
     "expires_at": int(time.time()) + 86400, "status": "active", "ended_height": None},
    {"id": "bank.delegate-old", "label": "old", "public_key": "B" * 43 + "=", "powers": ["jobs.Submit"],
     "expires_at": int(time.time()) + 86400, "status": "ended", "ended_height": 7},
    {"id": "bank.delegate-past", "label": "past", "public_key": "C" * 43 + "=", "powers": ["jobs.Submit"],
     "expires_at": int(time.time()) - 5, "status": "active", "ended_height": None},
    {"id": "bank.delegate-asks", "label": "asks", "public_key": "D" * 43 + "=", "powers": ["access.Request"],
     "expires_at": int(time.time()) + 86400, "status": "active", "ended_height": None},
    {"id": "telco.delegate-x", "label": "x", "public_key": "E" * 43 + "=", "powers": ["jobs.Submit"],
     "expires_at": int(time.time()) + 86400, "status": "active", "ended_height": None}]


def test_the_member_admin_lists_delegates_and_ends_active_ones(site):
    site.answers["/v1/members/bank/delegates"] = DELEGATES
    site.sign_in("bank", "member_admin")
    page = site.client.get("/delegates", headers={"accept-language": "en"})
    assert page.status_code == 200 and 'id="delegate-form"' in page.text and '<dialog id="ask"' in page.text
    assert f'data-undelegate="{ANALYST_ACCOUNT}"' in page.text and 'data-undelegate="bank.delegate-old"' not in page.text
    assert 'id="delegate-telco.delegate-x"' not in page.text  # not the member's: never shown
    assert ">expired<" in page.text and ">ended<" in page.text
    assert "授权密钥" in site.client.get("/delegates", headers={"accept-language": "zh-CN"}).text
    for member, role in (("bank", "analyst"), ("bank", "auditor"), ("association", "association_admin")):
        site.sign_in(member, role)
        assert site.client.get("/delegates").status_code == 403


GRANT = {"id": "g-1", "asset": "telco.a", "consumer": "bank", "provider": "telco", "status": "granted",
         "operations": ["psi"], "runs_used": 0, "max_runs": 3, "expires_at": int(time.time()) + 86400, "approvals": ["provider"]}
LISTING = {"id": "telco.a", "level": "L3", "provider": {"id": "telco", "name": "Telco"}, "operations": ["psi"],
           "status": "listed", "metadata": {"title": "Phones"}}


def test_the_analyst_s_jobs_form_signs_with_a_delegate_that_may_submit_jobs(site):
    site.answers.update({"/v1/jobs": [], "/v1/access-requests": [GRANT], "/v1/listings/telco.a": LISTING,
                         "/v1/billing/quote": {"max_price": 25}, "/v1/members/bank/delegates": DELEGATES})
    site.sign_in("bank", "analyst")
    page = site.client.get("/jobs", headers={"accept-language": "en"})
    assert page.status_code == 200 and 'id="submit-job"' in page.text, page.text
    assert f'data-account="{ANALYST_ACCOUNT}"' in page.text
    assert f"<option>{ANALYST_ACCOUNT}</option>" in page.text
    for unusable in ("bank.delegate-old", "bank.delegate-past", "bank.delegate-asks", "telco.delegate-x"):
        assert unusable not in page.text
    site.answers["/v1/members/bank/delegates"] = DELEGATES[1:]
    page = site.client.get("/jobs", headers={"accept-language": "en"})
    assert 'id="submit-job"' not in page.text and 'id="no-delegate"' in page.text


def test_the_analyst_asks_for_access_with_a_delegate_that_may(site):
    site.answers.update({"/v1/listings/telco.a": {**LISTING, "commitment": "00", "listed": {"height": 3},
                                                  "versions": [], "price": {"model": "fixed", "amount": 5}},
                         "/v1/billing/quote": {"max_price": 5}, "/v1/members/bank/delegates": DELEGATES})
    site.sign_in("bank", "analyst")
    page = site.client.get("/listings/telco.a")
    assert page.status_code == 200 and 'id="request-access" data-account="bank.delegate-asks"' in page.text
    assert ANALYST_ACCOUNT not in page.text  # a delegate for jobs only does not ask for access
    del site.answers["/v1/members/bank/delegates"]  # the list not to be had: the listing, without the form
    page = site.client.get("/listings/telco.a")
    assert page.status_code == 200 and 'id="request-access"' not in page.text
    site.sign_in("bank", "auditor")
    assert 'id="request-access"' not in site.client.get("/listings/telco.a").text
