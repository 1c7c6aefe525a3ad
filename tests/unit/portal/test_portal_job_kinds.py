"""The jobs form's computations beyond PSI (issue 21 part 2), through FastAPI's TestClient (the gateway an
httpx transport answering the real default Cedar policy, as in test_portal_routes.py): which computations
each grant is offered for, the inputs one per provider for aggregation and supply-chain verification, and
the quote for several listings (/api/quote)."""

from __future__ import annotations

import html
import json
import re
import time

import pytest

from services.portal.views import JOB_KINDS
from tests.unit.portal.test_portal_routes import Site

pytestmark = pytest.mark.unit

LATER = int(time.time()) + 86400


def grant(gid: str, asset: str, provider: str, ops: list[str], consumer: str = "bank") -> dict:
    return {"id": gid, "asset": asset, "consumer": consumer, "provider": provider, "status": "granted",
            "operations": ops, "runs_used": 0, "max_runs": 3, "expires_at": LATER, "approvals": ["provider"]}


def listing(asset: str, provider: str, ops: list[str]) -> dict:
    return {"id": asset, "level": "L3", "provider": {"id": provider, "name": provider}, "operations": ops,
            "status": "listed", "metadata": {"title": f"Title of {asset}"}}


GRANTS = [grant("g-agg-1", "telco.credit", "telco", ["aggregation"]),
          grant("g-agg-2", "logi.credit", "logi", ["aggregation", "supply_chain_verification"]),
          grant("g-model", "telco.model", "telco", ["he_scoring"]),
          grant("g-phones", "telco.phones", "telco", ["psi", "psi_cardinality"]),
          grant("g-other", "telco.other", "telco", ["psi"], consumer="shop")]  # another member's: never offered
QUOTES = {"telco.credit": 11, "logi.credit": 13, "telco.model": 300, "telco.phones": 25}


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    s.answers["/v1/jobs"] = []
    s.answers["/v1/access-requests"] = GRANTS
    for g in GRANTS:
        s.answers[f"/v1/listings/{g['asset']}"] = listing(g["asset"], g["provider"], g["operations"])
    s.answers["/v1/billing/quote"] = lambda r: {"max_price": sum(QUOTES[a] for a in r.url.params.get_list("asset"))}
    return s


def form_of(page: str) -> str:
    start = page.index('<form id="submit-job"')
    return page[start:page.index("</form>", start)]


def test_each_grant_is_offered_for_the_computations_its_operations_allow(site):
    site.sign_in("bank", "member_admin")
    page = site.client.get("/jobs", headers={"accept-language": "en"})
    assert page.status_code == 200
    form = form_of(page.text)
    assert re.findall(r'<option value="([a-z_]+)">', form.split('id="job-type"')[1].split("</select>")[0]) == [
        "psi", "psi_cardinality", "aggregation", "he_scoring", "he_statistics", "supply_chain"]
    kinds = dict(re.findall(r'<option value="(g-[a-z0-9-]+)" data-asset="[^"]+" data-quote="\d+" data-kinds="([^"]*)"', form))
    assert kinds == {"g-agg-1": "aggregation", "g-agg-2": "aggregation supply_chain",
                     "g-model": "he_scoring he_statistics", "g-phones": "psi psi_cardinality"}
    # the inputs for a computation with one per provider: check boxes, naming the provider
    boxes = re.findall(r'name="inputs" value="([^"]+)" id="[^"]+" data-asset="([^"]+)" data-provider="([^"]+)"', form)
    assert boxes == [("g-agg-1", "telco.credit", "telco"), ("g-agg-2", "logi.credit", "logi")]
    assert "g-other" not in page.text
    # the chain's job type of each computation, for the page's script
    assert json.loads(html.unescape(re.search(r'data-job-kinds="([^"]+)"', form).group(1))) == \
        {k: list(v) for k, v in JOB_KINDS.items()}
    assert JOB_KINDS["he_statistics"][0] == "he_scoring" and JOB_KINDS["supply_chain"][1] == "supply_chain_verification"
    # the price first shown: the quote of the first grant for the first computation (PSI on the phones)
    assert 'id="job-price" name="max_price" type="number" min="0" value="25"' in form
    for field in ("columns", "features", "column", "group_by", "groups", "own_kind", "stats", "kind-logi"):
        assert f'name="{field}"' in form
    chinese = site.client.get("/jobs", headers={"accept-language": "zh-CN"}).text
    assert "安全聚合（跨数据提供方统计）" in chinese and "供应链交叉核验" in chinese and "同态加密评分" in chinese


def test_only_what_the_member_holds_is_offered(site):
    site.answers["/v1/access-requests"] = [GRANTS[2]]
    site.sign_in("bank", "member_admin")
    form = form_of(site.client.get("/jobs").text)
    assert re.findall(r'<option value="([a-z_]+)">', form.split('id="job-type"')[1].split("</select>")[0]) == [
        "he_scoring", "he_statistics"]
    assert 'id="job-grants"' not in form and 'value="300"' in form


def test_a_quote_for_several_listings(site):
    assert site.client.get("/api/quote", params={"asset": "telco.credit"}).status_code == 401
    site.sign_in("bank", "analyst")
    answer = site.client.get("/api/quote", params=[("asset", "telco.credit"), ("asset", "logi.credit")])
    assert answer.status_code == 200 and answer.json() == {"max_price": 24}
    [call] = [r for r in site.seen if r.url.path == "/v1/billing/quote"]
    assert call.url.params.get_list("asset") == ["telco.credit", "logi.credit"]
    assert call.headers["authorization"] == "Bearer rdx_bankana.secret"
    site.seen.clear()
    for bad in ([], [("asset", "NOT..valid")], [("asset", "telco.credit")] * 2,
                [("asset", f"telco.a{i}") for i in range(17)], [("asset", "../keys")]):
        assert site.client.get("/api/quote", params=bad).status_code == 400
    assert site.seen == []
