"""The catalog's HTTP API over a read model fed directly (no Kafka, no chain): drafts, search,
detail, versions, the DCAT-AP export, and the error format."""

from __future__ import annotations

import base64
from datetime import date, timedelta

import pytest
from catalogkit import Feed, apply_all, listing, open_model
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.catalog import drafts
from services.catalog.drafts import Existing
from services.catalog.facets import FacetCache
from services.catalog.store import Readers
from services.catalog.views import Catalog, install
from services.common.identity import Identity
from services.common.listing import ListingDraft, example_metadata
from services.common.policy import Policy
from services.common.tx import Tx

TODAY = date(2026, 1, 15)


@pytest.fixture
def client(tmp_path):
    path = tmp_path / "catalog.sqlite"
    writer = open_model(path)
    feed = Feed()
    feed.member("telco", "Pearl River Telecom")
    terms = dict(licence="CC-BY-4.0", licence_url="https://creativecommons.org/licenses/by/4.0/",
                 contact="data@telco.example")
    feed.listed("telco", listing("telco.subs", title="Mobile subscribers by district", **terms))
    feed.listed("telco", listing("telco.open", level="L1", operations=("raw_download", "psi"), title="Open cell sites",
                                 update_cycle="real-time", industry=["telecom", "energy"],
                                 description="Locations of cell sites, open data.", tags=["cell-sites"],
                                 columns=[{"name": "district", "type": "category", "sensitivity": "public"}],
                                 sample={"kind": "real", "rows": [{"district": "Futian"}]}))
    feed.updated("telco", listing("telco.subs", title="Mobile subscribers by district and plan", **terms))
    feed.listed("telco", listing("telco.old", title="Retired dataset"))
    feed.delisted("telco", listing("telco.old", title="Retired dataset"))
    apply_all(writer, feed.events)
    app = FastAPI()
    readers = Readers(path)
    install(app, Catalog(readers=readers, cache=FacetCache(), ingest=None, chain=None, chain_id="rdx-test",
                         base_url="https://catalog.example"))
    with TestClient(app) as c:
        yield c
    readers.close()
    writer.close()


def draft(**changes):
    body = listing("telco.new", **changes)
    return body


def test_validate_explains_every_problem_field_by_field(client):
    bad = draft(title="", region="no/slash")
    bad["commitment"] = "nothex"
    bad["operations"] = ["raw_download"]
    res = client.post("/v1/drafts/validate", json={"listing": bad})
    assert res.status_code == 200
    body = res.json()
    assert body["valid"] is False and body["payload"] is None
    fields = {p["field"] for p in body["problems"]}
    assert fields == {"metadata.title", "metadata.region", "commitment", "operations[0]"}
    assert all(p["message"] for p in body["problems"])


def test_validate_accepts_a_good_draft_and_returns_the_canonical_payload(client):
    res = client.post("/v1/drafts/validate", json={"listing": draft(level="L4", operations=("he_scoring",))})
    body = res.json()
    assert body["valid"] is True and body["problems"] == []
    assert body["approvals"] == {"he_scoring": ["provider", "association"]}
    assert body["payload"] == ListingDraft.model_validate(draft(level="L4", operations=("he_scoring",))).payload()


def test_validate_knows_existing_listings(client):
    taken = client.post("/v1/drafts/validate", json={"listing": listing("telco.subs")}).json()
    assert [p["field"] for p in taken["problems"]] == ["id"] and "assets.Update" in taken["problems"][0]["message"]
    not_owner = client.post("/v1/drafts/validate", json={"type": "assets.Update", "signer": "bank",
                                                          "listing": listing("telco.subs")}).json()
    assert "only its owner" in not_owner["problems"][0]["message"]
    gone = client.post("/v1/drafts/validate", json={"type": "assets.Update", "signer": "telco",
                                                     "listing": listing("telco.old")}).json()
    assert "delisted" in gone["problems"][0]["message"]
    ok = client.post("/v1/drafts/validate", json={"type": "assets.Update", "signer": "telco",
                                                   "listing": listing("telco.subs")}).json()
    assert ok["valid"] is True


def test_validate_rejects_a_non_object(client):
    res = client.post("/v1/drafts/validate", json={"listing": [1, 2]})
    assert res.json()["problems"] == [{"field": "listing", "message": "must be a JSON object (the assets.List payload)"}]


def test_unsigned_tx_signed_by_the_provider_is_a_valid_chain_tx(client):
    telco = Identity.generate("telco")
    res = client.post("/v1/drafts/tx", json={"signer": "telco", "nonce": 7, "listing": draft()})
    assert res.status_code == 200, res.text
    body = res.json()
    unsigned = body["tx"]
    assert unsigned["chain_id"] == "rdx-test" and unsigned["nonce"] == 7 and unsigned["type"] == "assets.List"
    sign_bytes = base64.b64decode(body["sign_bytes"])
    signed = Tx(**unsigned, sig=telco.sign(sign_bytes))
    assert signed.signing_bytes() == sign_bytes
    assert Tx.decode(signed.encode()) == signed  # canonical: the chain decodes it as is
    assert signed == Tx.build(telco, "rdx-test", "assets.List", 7, ListingDraft.model_validate(draft()).payload())


def test_unsigned_tx_needs_a_signer_and_a_valid_draft(client):
    assert client.post("/v1/drafts/tx", json={"nonce": 1, "listing": draft()}).json()["problems"][0]["field"] == "signer"
    res = client.post("/v1/drafts/tx", json={"signer": "telco", "nonce": 1, "listing": draft(row_count="many")})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == "metadata.row_count"
    res = client.post("/v1/drafts/tx", json={"signer": "telco", "listing": draft()})
    assert res.status_code == 503 and res.json()["problems"][0]["field"] == "nonce"  # no chain here: say so


def test_search_endpoint(client):
    res = client.get("/v1/listings", params={"q": "subscribers", "facets": "true"})
    assert res.status_code == 200
    body = res.json()
    assert [i["id"] for i in body["items"]] == ["telco.subs"]
    assert body["items"][0]["version"] == 2 and "<mark>" in body["items"][0]["highlights"]["title"]
    assert {v["value"] for v in body["facets"]["level"]} == {"L3"}
    res = client.get("/v1/listings", params=[("level", "L1"), ("level", "L3"), ("sort", "title")])
    assert [i["id"] for i in res.json()["items"]] == ["telco.subs", "telco.open"]
    assert client.get("/v1/listings", params={"q": "retired"}).json()["total"] == 0


def test_search_errors_name_the_parameter(client):
    res = client.get("/v1/listings", params={"sort": "sideways"})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == "sort"
    res = client.get("/v1/listings", params={"cursor": "garbage"})
    assert res.status_code == 400 and res.json()["problems"][0]["field"] == "cursor"
    res = client.get("/v1/listings", params={"limit": 1000})
    assert res.status_code == 422 and res.json()["problems"][0]["field"] == "limit"


def test_detail_versions_and_delisted_history(client):
    detail = client.get("/v1/listings/telco.subs").json()
    assert detail["version"] == 2 and [v["version"] for v in detail["versions"]] == [1, 2]
    assert detail["proof"]["height"] > detail["listed"]["height"] and detail["provider"]["name"] == "Pearl River Telecom"
    versions = client.get("/v1/listings/telco.subs/versions").json()
    assert versions[0]["metadata"]["title"] == "Mobile subscribers by district"
    assert client.get("/v1/listings/telco.subs/versions/2").json()["metadata"]["title"].endswith("and plan")
    old = client.get("/v1/listings/telco.old").json()
    assert old["status"] == "delisted" and old["searchable"] is False and len(old["versions"]) == 2
    assert client.get("/v1/listings/nope.x").status_code == 404
    assert client.get("/v1/listings/telco.subs/versions/9").status_code == 404
    assert client.get("/v1/listings/BAD ID").status_code == 422


def test_dcat_ap_export(client):
    res = client.get("/v1/catalog.jsonld")
    assert res.status_code == 200 and res.headers["content-type"].startswith("application/ld+json")
    doc = res.json()
    assert doc["@type"] == "dcat:Catalog" and doc["@context"]["dcat"] == "http://www.w3.org/ns/dcat#"
    assert doc["hydra:totalItems"] == 2
    datasets = {d["dct:identifier"]: d for d in doc["dcat:dataset"]}
    assert set(datasets) == {"telco.open", "telco.subs"}  # delisted listings are not exported
    subs = datasets["telco.subs"]
    for prop in ("dct:title", "dct:description", "dct:publisher", "dcat:keyword", "dct:accessRights",
                 "dct:accrualPeriodicity", "dct:temporal", "dct:spatial", "dct:license", "dct:rights", "dcat:version",
                 "dcat:distribution", "dcat:contactPoint"):
        assert prop in subs, prop
    assert subs["@id"] == "https://catalog.example/v1/listings/telco.subs"
    assert subs["dct:accessRights"]["@id"].endswith("access-right/NON_PUBLIC")
    assert subs["dct:accrualPeriodicity"]["@id"].endswith("frequency/MONTHLY")
    assert subs["dct:license"] == {"@id": "https://creativecommons.org/licenses/by/4.0/"}
    assert subs["dcat:version"] == "2" and subs["dct:publisher"]["foaf:name"] == "Pearl River Telecom"
    assert subs["dcat:theme"] == [{"@id": "http://publications.europa.eu/resource/authority/data-theme/TECH"}]
    opened = datasets["telco.open"]
    assert opened["dct:accessRights"]["@id"].endswith("access-right/PUBLIC")
    assert opened["dct:accrualPeriodicity"]["@id"].endswith("frequency/UPDATE_CONT")
    first = client.get("/v1/catalog.jsonld", params={"limit": 1}).json()
    assert len(first["dcat:dataset"]) == 1 and "hydra:next" in first["hydra:view"]
    nxt = first["hydra:view"]["hydra:next"]["@id"].split("?", 1)[1]
    second = client.get(f"/v1/catalog.jsonld?{nxt}").json()
    assert [d["dct:identifier"] for d in second["dcat:dataset"]] == ["telco.subs"]
    assert "hydra:next" not in second["hydra:view"]


# -- the draft rules without HTTP ---------------------------------------------------------------

def test_catalog_rules_beyond_the_contract():
    policy = Policy()
    future = (TODAY + timedelta(days=1)).isoformat()
    verdict = drafts.validate(listing("a.b.c", level="L4", operations=("psi", "aggregation"), last_updated=future),
                              today=TODAY, policy=policy)
    assert {p["field"] for p in verdict.problems} == {"operations[0]", "metadata.last_updated"}
    assert "never allowed on L4" in verdict.problems[0]["message"]
    assert verdict.approvals == {"aggregation": ["provider", "association"]}
    assert not verdict.valid and verdict.draft is None
    ok = drafts.validate(listing("a.b.c", level="L1", operations=("raw_download",)), today=TODAY, policy=policy)
    assert ok.valid and ok.approvals == {"raw_download": []}
    update = drafts.validate(listing("a.b.c"), today=TODAY, policy=policy, tx_type=drafts.UPDATE, signer="x",
                             existing=Existing("y", "listed", 3))
    assert [p["field"] for p in update.problems] == ["id"]


def test_level_rule_is_reported_with_other_problems():
    body = listing("a.b.c", level="L3", sample={"kind": "synthetic", "rows": [{"district": "x"}]})
    body["commitment"] = "zz"
    verdict = drafts.validate(body, today=TODAY, policy=Policy())
    assert {p["field"] for p in verdict.problems} == {"commitment", "metadata.sample"}


def test_metadata_example_is_a_valid_draft():
    assert drafts.validate(listing("a.b.c", metadata=example_metadata()), today=TODAY, policy=Policy()).valid
