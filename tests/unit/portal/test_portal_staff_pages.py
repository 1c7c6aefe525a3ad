"""The association staff's pages added for issue 21 part 1, through FastAPI's TestClient (the gateway an
httpx transport, as in test_portal_routes.py): admitting a member (members.Register, signed in the
staff's browser and relayed only from association staff) and the approval queue (the access requests
whose grant needs the association's approval, approved with access.Approve from the staff's browser)."""

from __future__ import annotations

import re

import pytest

from tests.unit.portal.test_portal_routes import Site, tx_call

pytestmark = pytest.mark.unit

MEMBERS = [{"id": "association", "name": "The association", "roles": ["association"], "status": "active",
            "public_key": "As" + "A" * 41 + "=", "node": None},
           {"id": "bank", "name": "Bank", "roles": ["consumer"], "status": "active", "public_key": "Bk" + "B" * 41 + "=",
            "node": {"account": "bank.node", "endpoint": "node.bank.example:50051<b>", "public_key": "Nd" + "N" * 41 + "="}}]
REGISTER = {"id": "shop", "name": "小店", "roles": ["consumer"], "public_key": "A" * 43 + "="}


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    s.answers["/v1/members"] = MEMBERS
    s.answers["/v1/jobs"] = []
    return s


@pytest.mark.parametrize("lang, title, role", (("en", "Admit a member", "Consumer (runs jobs)"),
                                               ("zh-CN", "接纳会员", "数据使用方（运行作业）")))
def test_staff_see_the_admit_form_in_both_languages(site, lang, title, role):
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/members", headers={"accept-language": lang})
    assert page.status_code == 200 and '<form id="admit-form" data-account="association"' in page.text
    assert title in page.text and role in page.text
    for field in ("member_id", "member_name", "public_key", "node_key", "endpoint"):
        assert f'name="{field}"' in page.text
    # the roles offered: never "association" (admitting another association member is not this form's)
    assert [r for r in ("provider", "consumer", "compute_operator", "association")
            if f'value="{r}" id="admit-role-{r}"' in page.text] == ["provider", "consumer", "compute_operator"]
    assert '<dialog id="ask"' in page.text


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("bank", "analyst"), ("association", "auditor")))
def test_no_one_else_gets_the_admit_form(site, member, role):
    site.sign_in(member, role)
    page = site.client.get("/staff/members")
    assert page.status_code == 403 and "admit-form" not in page.text


def test_members_register_is_relayed_from_association_staff_only(site):
    for member, role in (("bank", "member_admin"), ("association", "auditor")):
        s = site.sign_in(member, role)
        answer = tx_call(site, s, "members.Register", REGISTER)
        assert answer.status_code == 403 and "detail" in answer.json()
    s = site.sign_in("bank", "analyst")  # nor signed by one of the member's delegates
    tx = {"chain_id": "rdx-local", "nonce": 1, "payload": REGISTER, "sig": "AA==", "signer": "bank.delegate-lina",
          "type": "members.Register"}
    assert site.client.post("/api/tx", json={"tx": tx}, headers={"x-csrf-token": s.csrf,
                                                                  "origin": site.portal.settings.portal_public_url}
                            ).status_code == 403
    s = site.sign_in("association", "association_admin")
    assert tx_call(site, s, "members.Register", REGISTER, **{"x-csrf-token": "wrong"}).status_code == 403
    assert site.calls == []
    assert tx_call(site, s, "members.Register", REGISTER).status_code == 404  # relayed: the gateway's answer here
    [call] = site.calls
    assert call.url.path == "/v1/tx" and call.headers["authorization"] == "Bearer rdx_associationass.secret"


def pending(gid: str, needs: list[str], approvals: list[str]) -> dict:
    return {"id": gid, "asset": "telco.l4", "consumer": "bank", "provider": "telco", "operations": ["psi"],
            "purpose": "审计", "status": "pending", "needs": needs, "approvals": approvals}


def test_the_approval_queue_lists_what_waits_for_the_association(site):
    site.answers["/v1/access-requests"] = [
        pending("g-both", ["provider", "association"], ["provider"]), pending("g-first", ["provider", "association"], []),
        pending("g-done", ["provider", "association"], ["association"]), pending("g-provider", ["provider"], [])]
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/approvals", headers={"accept-language": "en"})
    assert page.status_code == 200 and "Requests waiting for the association" in page.text
    assert [g for g in ("g-both", "g-first", "g-done", "g-provider") if f'data-approve="{g}"' in page.text] == \
        ["g-both", "g-first"]
    assert 'data-approve="g-both" data-account="association"' in page.text
    assert page.text.count('data-tx="access.Reject"') == 2 and '<dialog id="confirm"' in page.text
    [call] = [r for r in site.seen if r.url.path == "/v1/access-requests"]
    assert call.url.params["status"] == "pending"
    assert call.headers["authorization"] == "Bearer rdx_associationass.secret"
    assert "等待协会审批的申请" in site.client.get("/staff/approvals", headers={"accept-language": "zh-CN"}).text
    site.answers["/v1/access-requests"] = [pending("g-provider", ["provider"], [])]
    page = site.client.get("/staff/approvals")
    assert 'id="no-approvals"' in page.text and "data-approve" not in page.text


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("bank", "analyst"), ("association", "auditor")))
def test_only_staff_see_the_approval_queue(site, member, role):
    site.sign_in(member, role)
    assert site.client.get("/staff/approvals").status_code == 403
    assert site.calls == []


def test_the_association_s_approval_is_relayed_to_the_grant_s_route(site):
    s = site.sign_in("association", "association_admin")
    assert tx_call(site, s, "access.Approve", {"id": "g-both"}).status_code == 404  # relayed: the gateway's answer
    [call] = site.calls
    assert call.url.path == "/v1/access-requests/g-both/approve"
    site.calls.clear()
    assert tx_call(site, s, "access.Reject", {"id": "g-both", "reason": "x"}).status_code == 404  # relayed
    assert [c.url.path for c in site.calls] == ["/v1/access-requests/g-both/reject"]
    site.calls.clear()
    assert tx_call(site, s, "access.Reject", {"id": "../g", "reason": "x"}).status_code == 400
    for member, role in (("association", "auditor"), ("bank", "analyst")):  # nor from these
        s = site.sign_in(member, role)
        for tx_type in ("access.Approve", "access.Reject"):
            assert tx_call(site, s, tx_type, {"id": "g-both", "reason": "x"}).status_code == 403
    assert site.calls == []
    # a member admin's rejection is relayed as its approval is: the chain lets only the listing's provider decide
    s = site.sign_in("bank", "member_admin")
    assert tx_call(site, s, "access.Reject", {"id": "g-both", "reason": "x"}).status_code == 404
    assert [c.url.path for c in site.calls] == ["/v1/access-requests/g-both/reject"]


HEALTH = {"network": "rdx-local", "latest_height": 812, "latest_time": "2026-12-02T18:55:01.123456789Z",
          "catching_up": False, "validators_total": 2, "validators": [
              {"address": "AB" * 20, "public_key": "K" * 43 + "=", "voting_power": 10},
              {"address": "CD" * 20, "public_key": "<script>", "voting_power": 5}],
          "relay_height": 809, "relay_lag": 3,
          "dead_letters": {"rdx.chain.events.v1.dlq": 2, "rdx.audit.v1.dlq": None, "rdx.jobs.status.v1.dlq": 0}}


def test_the_network_page_shows_what_the_gateway_reports(site):
    site.answers["/v1/network"] = HEALTH
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/network", headers={"accept-language": "en"})
    assert page.status_code == 200
    assert '<dd id="height">812</dd>' in page.text and '<dd id="validators-total">2</dd>' in page.text
    assert '<dd id="catching-up">no</dd>' in page.text and "2026-12-02T18:55:01.123456789Z" in page.text
    assert page.text.count('<td class="power">') == 2 and "AB" * 20 in page.text
    assert "&lt;script&gt;" in page.text and "<script>" not in page.text.split("</head>")[1]
    assert "not shown" not in page.text
    assert '<dd id="relay-lag">3 blocks (the last chain event the relay published is from block 809)</dd>' in page.text
    rows = re.findall(r'<tr><td class="topic">([^<]*)</td><td class="count">([^<]*)</td></tr>', page.text)
    assert rows == [("rdx.audit.v1.dlq", "unknown (Kafka did not answer)"), ("rdx.chain.events.v1.dlq", "2"),
                    ("rdx.jobs.status.v1.dlq", "0")]
    zh = site.client.get("/staff/network", headers={"accept-language": "zh-CN"}).text
    assert "最新区块" in zh and '<dd id="relay-lag">3 个区块（中继最后发布的链上事件来自区块 809）</dd>' in zh
    assert '<td class="count">未知（Kafka 未应答）</td>' in zh and "死信主题" in zh
    # Kafka did not answer: the chain's part is shown, the relay's lag and the counts as unknown.
    site.answers["/v1/network"] = {**HEALTH, "relay_height": None, "relay_lag": None,
                                   "dead_letters": dict.fromkeys(HEALTH["dead_letters"])}
    page = site.client.get("/staff/network", headers={"accept-language": "en"})
    assert '<dd id="height">812</dd>' in page.text
    assert '<dd id="relay-lag">unknown (Kafka did not answer)</dd>' in page.text
    assert page.text.count('<td class="count">unknown (Kafka did not answer)</td>') == 3
    del site.answers["/v1/network"]  # the gateway's refusal, as a page
    assert site.client.get("/staff/network").status_code == 404


@pytest.mark.parametrize("member, role", (("bank", "member_admin"), ("bank", "analyst"), ("association", "auditor")))
def test_only_staff_see_the_network_page(site, member, role):
    site.sign_in(member, role)
    assert site.client.get("/staff/network").status_code == 403
    assert site.calls == []


@pytest.mark.parametrize("lang, none", (("en", "none"), ("zh-CN", "无")))
def test_staff_see_each_members_key_and_node_as_the_chain_has_them(site, lang, none):
    site.sign_in("association", "association_admin")
    page = site.client.get("/staff/members", headers={"accept-language": lang}).text
    bank = page[page.index('<tr id="member-bank">'):]
    bank = bank[:bank.index("</tr>")]
    assert "<code>Bk" + "B" * 41 + "=</code>" in bank and "bank.node" in bank
    assert "node.bank.example:50051&lt;b&gt;" in bank and "<code>Nd" + "N" * 41 + "=</code>" in bank  # escaped
    association = page[page.index('<tr id="member-association">'):]
    assert f'<td class="node">{none}</td>' in association[:association.index("</tr>")]
