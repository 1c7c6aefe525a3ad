"""The catalog's event handler and search: versions, delisting, facets, filters, sorting,
cursors, highlights, counts, and that a rebuild or a replay gives the identical index."""

from __future__ import annotations

import random

import pytest
from catalogkit import Feed, apply_all, listing, open_model, reader

from services.catalog import events, listings, search, store
from services.catalog.facets import FacetCache
from services.catalog.search import BadQuery, Query


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "catalog.sqlite"
    writer = open_model(path)
    feed = Feed()

    class Model:
        def __init__(self):
            self.feed, self.writer, self.path = feed, writer, path
            self.conn = reader(path)
            self.cache = FacetCache()

        def apply(self):
            apply_all(writer, feed.events)

        def search(self, **kw):
            return search.search(self.conn, self.cache, Query(**kw))

        def ids(self, **kw):
            return [i["id"] for i in self.search(**kw)["items"]]

    yield Model()
    writer.close()


BANK_COLUMNS = [{"name": "enterprise_id", "type": "string", "description": "registration number",
                 "sensitivity": "identifier"}]


def corpus(m) -> None:
    f = m.feed
    f.member("telco", "Pearl River Telecom")
    f.member("bank", "Harbour Bank")
    f.listed("telco", listing("telco.subs", title="Mobile subscribers by district", tags=["subscribers"],
                              region="CN-GD", update_cycle="monthly", price={"model": "fixed", "amount": 500}))
    f.listed("telco", listing("telco.roaming", level="L2", title="Roaming events", tags=["roaming"],
                              description="Roaming events of subscribers abroad, by country and day.",
                              region="CN-GD", update_cycle="daily", operations=("psi", "aggregation"),
                              price={"model": "per_record", "amount": 2}))
    f.listed("bank", listing("bank.blacklist", level="L3", title="Fraud blacklist", industry=["finance"],
                             tags=["anti-fraud"], region="CN-HK", update_cycle="real-time",
                             description="Phone numbers confirmed in card fraud cases.", columns=BANK_COLUMNS,
                             price={"model": "free", "amount": 0}, operations=("psi", "psi_cardinality")))
    f.listed("bank", listing("bank.credit", level="L4", title="Corporate credit scores", industry=["finance"],
                             tags=["credit"], region="CN-GD", update_cycle="quarterly", operations=("aggregation",),
                             description="Credit scores of enterprises <b>for</b> joint credit reporting.",
                             columns=BANK_COLUMNS,
                             price={"model": "fixed", "amount": 20000}))
    m.apply()


def test_listed_listing_is_searchable_with_highlights(model):
    corpus(model)
    found = model.search(q="subscribers")
    assert [i["id"] for i in found["items"]] == ["telco.subs", "telco.roaming"]  # title beats description
    top = found["items"][0]
    assert top["highlights"]["title"] == "Mobile <mark>subscribers</mark> by district"
    assert top["provider"] == {"id": "telco", "name": "Pearl River Telecom"}
    assert top["proof"]["height"] == 3 and len(top["proof"]["tx_hash"]) == 64
    assert top["score"] > found["items"][1]["score"]
    # stemming: subscriber finds subscribers; prefix; provider name; column names are searchable
    assert model.ids(q="subscriber")[:1] == ["telco.subs"]
    assert set(model.ids(q="subscrib*")) == {"telco.subs", "telco.roaming"}
    assert set(model.ids(q="harbour")) == {"bank.blacklist", "bank.credit"}
    assert "telco.subs" in model.ids(q="tenure_months")


def test_highlights_are_escaped_html(model):
    corpus(model)
    [item] = model.search(q="reporting")["items"]
    assert "&lt;b&gt;for&lt;/b&gt;" in item["highlights"]["description"]
    assert "<mark>reporting</mark>" in item["highlights"]["description"]


def test_query_syntax_is_never_passed_to_fts5(model):
    corpus(model)
    for text in ['credit OR "', "NOT fraud", "title:fraud", "(", "fraud)", "*", '"', "NEAR(a b)", "a AND", "-"]:
        model.search(q=text)  # never an FTS5 syntax error
    assert model.search(q="(*)")["total"] == 0
    assert model.ids(q='"card fraud"') == ["bank.blacklist"]
    assert model.ids(q='"fraud card"') == []
    assert search.fts_query('x" OR y').endswith(' : ("x" "OR" "y")')


def test_update_is_a_new_version_and_search_sees_only_the_latest(model):
    corpus(model)
    model.feed.updated("telco", listing("telco.subs", title="Mobile subscribers by district and plan",
                                        tags=["subscribers", "plans"], price={"model": "fixed", "amount": 700}))
    model.apply()
    detail = listings.detail(model.conn, "telco.subs")
    assert detail["version"] == 2 and detail["metadata"]["tags"] == ["subscribers", "plans"]
    assert [v["version"] for v in detail["versions"]] == [1, 2]
    assert [v["event"] for v in detail["versions"]] == ["AssetListed", "AssetUpdated"]
    assert detail["versions"][0]["proof"]["height"] < detail["versions"][1]["proof"]["height"]
    assert detail["listed"] == detail["versions"][0]["proof"]
    old = listings.version(model.conn, "telco.subs", 1)
    assert old["price"] == {"model": "fixed", "amount": 500} and old["metadata"]["tags"] == ["subscribers"]
    assert model.ids(q="plans") == ["telco.subs"]
    assert model.search(q="subscribers")["total"] == 2  # still one document per listing


def test_delisted_disappears_from_search_and_stays_in_history(model):
    corpus(model)
    model.feed.delisted("bank", listing("bank.blacklist", level="L3", title="Fraud blacklist", industry=["finance"],
                                        tags=["anti-fraud"], region="CN-HK", update_cycle="real-time",
                                        price={"model": "free", "amount": 0}, operations=("psi", "psi_cardinality")))
    model.apply()
    assert model.ids(q="fraud") == []
    everything = model.search(limit=100)
    assert "bank.blacklist" not in [i["id"] for i in everything["items"]] and everything["total"] == 3
    assert all(v["value"] != "CN-HK" for v in everything["facets"]["region"])
    detail = listings.detail(model.conn, "bank.blacklist")
    assert detail["status"] == "delisted" and not detail["searchable"]
    assert [v["status"] for v in detail["versions"]] == ["listed", "delisted"]


def test_facets_filters_and_disjunctive_counts(model):
    corpus(model)
    everything = model.search()
    counts = {f: {v["value"]: v["count"] for v in values} for f, values in everything["facets"].items()}
    assert counts["level"] == {"L2": 1, "L3": 2, "L4": 1}
    assert counts["operation"] == {"psi": 3, "aggregation": 2, "psi_cardinality": 1}
    assert counts["provider"] == {"telco": 2, "bank": 2}
    assert counts["price_band"] == {"free": 1, "1-99": 1, "100-999": 1, "10000+": 1}
    assert counts["industry"] == {"telecom": 2, "finance": 2}

    # values within a facet are ORed, facets ANDed
    assert set(model.ids(filters={"level": ("L2", "L4")})) == {"telco.roaming", "bank.credit"}
    found = model.search(filters={"level": ("L3",), "region": ("CN-GD",)})
    assert [i["id"] for i in found["items"]] == ["telco.subs"]
    level = {v["value"]: (v["count"], v["selected"]) for v in found["facets"]["level"]}
    # disjunctive: the level facet is counted under the region filter only, so L2 and L4 stay visible
    assert level == {"L3": (1, True), "L2": (1, False), "L4": (1, False)}
    region = {v["value"]: v["count"] for v in found["facets"]["region"]}
    assert region == {"CN-GD": 1, "CN-HK": 1}  # counted under the level filter only
    assert {v["value"] for v in found["facets"]["update_cycle"]} == {"monthly"}  # the result set

    assert model.ids(q="subscribers", filters={"operation": ("aggregation",)}) == ["telco.roaming"]
    assert set(model.ids(price_min=100, price_max=1000)) == {"telco.subs"}
    assert set(model.ids(filters={"price_band": ("free", "10000+")})) == {"bank.blacklist", "bank.credit"}
    assert model.ids(filters={"tag": ("nothing-like-it",)}) == []


def test_sorting(model):
    corpus(model)
    assert model.ids(sort="newest") == ["bank.credit", "bank.blacklist", "telco.roaming", "telco.subs"]
    assert model.ids(sort="oldest") == ["telco.subs", "telco.roaming", "bank.blacklist", "bank.credit"]
    assert model.ids(sort="title") == ["bank.credit", "bank.blacklist", "telco.subs", "telco.roaming"]
    assert model.ids(sort="price_asc") == ["bank.blacklist", "telco.roaming", "telco.subs", "bank.credit"]
    assert model.ids(sort="price_desc")[0] == "bank.credit"
    assert model.search(q="credit")["sort"] == "relevance" and model.search()["sort"] == "newest"


@pytest.mark.parametrize("sort", ["relevance", "newest", "oldest", "title", "price_asc", "price_desc", "rows_desc"])
def test_cursor_pagination_visits_everything_once(model, sort):
    rng = random.Random(sort)
    model.feed.member("telco", "Pearl River Telecom")
    for i in range(57):
        model.feed.listed("telco", listing(f"telco.d{i:02d}", title=f"Dataset {i} of subscribers",
                                           row_count=rng.choice([10, 20, 30]),
                                           price={"model": "fixed", "amount": rng.choice([1, 5, 5, 9])}))
    model.apply()
    kw = {"sort": sort, "limit": 10, "q": "subscribers" if sort == "relevance" else None}
    seen, cursor, pages = [], None, 0
    while True:
        page = model.search(cursor=cursor, **kw)
        assert page["total"] == 57
        seen += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 6 and len(seen) == 57 and len(set(seen)) == 57
    assert seen == model.ids(sort=sort, limit=100, q=kw["q"])  # pages concatenate to one long page
    with pytest.raises(BadQuery, match="cursor"):
        model.search(cursor=model.search(**kw)["next_cursor"], sort=sort, limit=10, q="other words")
    with pytest.raises(BadQuery, match="cursor"):
        model.search(cursor="not-a-cursor", **kw)


def test_grant_and_usage_counts(model):
    corpus(model)
    f = model.feed
    f.granted("g1", "telco.subs")
    f.granted("g2", "telco.subs")
    f.revoked("g2", "telco.subs")
    f.job("j1", ["telco.subs", "bank.blacklist"])
    f.job("j2", ["telco.subs"], end="JobFailed")
    f.job("j3", ["telco.subs"], end=None)
    model.apply()
    detail = listings.detail(model.conn, "telco.subs")
    assert detail["grants"] == {"total": 2, "active": 1}
    assert detail["usage"] == {"jobs": 3, "completed": 1}
    assert listings.detail(model.conn, "bank.blacklist")["usage"] == {"jobs": 1, "completed": 1}


def test_listing_committed_under_an_older_contract_is_still_indexed(model):
    ev = model.feed.listed("telco", listing("telco.subs"))
    ev.data["metadata"] = {"title": "Legacy subscribers", "rows": 5}  # what the chain stored before the contract
    model.apply()
    detail = listings.detail(model.conn, "telco.subs")
    assert detail["metadata_valid"] is False and detail["metadata"]["rows"] == 5
    assert model.ids(q="legacy") == ["telco.subs"]


def test_member_registered_after_its_listing_still_makes_it_searchable_by_name(model):
    model.feed.listed("telco", listing("telco.subs"))
    model.feed.member("telco", "Pearl River Telecom")
    model.apply()
    assert model.ids(q="pearl river") == ["telco.subs"]


def _rich_feed() -> Feed:
    f = Feed()
    f.member("telco", "Pearl River Telecom")
    f.member("bank", "Harbour Bank")
    for i in range(30):
        owner = "telco" if i % 2 else "bank"
        f.listed(owner, listing(f"{owner}.a{i}", level=["L1", "L2", "L3", "L4"][i % 4],
                                operations=("aggregation",), title=f"Asset {i}", tags=[f"t{i % 5}"]))
    for i in range(0, 30, 3):
        owner = "telco" if i % 2 else "bank"
        f.updated(owner, listing(f"{owner}.a{i}", level=["L1", "L2", "L3", "L4"][i % 4],
                                 operations=("aggregation",), title=f"Asset {i} revised"))
    for i in range(0, 30, 7):
        owner = "telco" if i % 2 else "bank"
        f.delisted(owner, listing(f"{owner}.a{i}", level=["L1", "L2", "L3", "L4"][i % 4], operations=("aggregation",)))
    f.granted("g1", "bank.a2")
    f.job("j1", ["bank.a2", "telco.a3"])
    return f


def test_rebuild_gives_the_identical_index_and_replay_does_not_duplicate(tmp_path):
    feed = _rich_feed()
    first = open_model(tmp_path / "first.sqlite")
    apply_all(first, feed.events)
    digest = store.digest(first)

    rebuilt = open_model(tmp_path / "rebuilt.sqlite")  # an empty read model fed from offset 0
    apply_all(rebuilt, feed.events)
    assert store.dump(rebuilt) == store.dump(first) and store.digest(rebuilt) == digest

    apply_all(first, feed.events)  # the whole topic again: nothing changes, nothing doubles
    assert store.digest(first) == digest
    for ev in feed.events:  # even without the applied-id log, each handler is idempotent on its own
        events.apply(ev, first)
    assert store.dump(first)["listings"] == store.dump(rebuilt)["listings"]
    assert store.dump(first)["versions"] == store.dump(rebuilt)["versions"]
    assert store.dump(first)["fts"] == store.dump(rebuilt)["fts"]
    dumped = store.dump(first)
    assert len(dumped["versions"]) == len({(v[0], v[1]) for v in dumped["versions"]})


def test_entities_interleaved_differently_give_the_same_index(tmp_path):
    """As several partitions would deliver them: each entity's events in order, entities mixed."""
    feed = _rich_feed()
    base = open_model(tmp_path / "base.sqlite")
    apply_all(base, feed.events)
    by_entity: dict[str, list] = {}
    for ev in feed.events:
        by_entity.setdefault(ev.entity, []).append(ev)
    rng = random.Random(4)
    queues = [list(v) for v in by_entity.values()]
    mixed = []
    while queues:
        q = rng.choice(queues)
        mixed.append(q.pop(0))
        if not q:
            queues.remove(q)
    other = open_model(tmp_path / "other.sqlite")
    apply_all(other, mixed)
    assert store.digest(other) == store.digest(base)


def test_search_answers_agree_between_rebuilt_models(tmp_path):
    feed = _rich_feed()
    answers = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.sqlite"
        apply_all(open_model(path), feed.events)
        conn, cache = reader(path), FacetCache()
        answers.append([search.search(conn, cache, q) for q in (
            Query(q="asset"), Query(q="revised", filters={"level": ("L1", "L3")}), Query(sort="title", limit=50))])
    assert answers[0] == answers[1]


def test_cursors_stay_short_enough_for_a_url(model):
    long_id = "telco." + "x" * 74  # the longest id the chain allows (80)
    model.feed.listed("telco", listing(long_id, title="Long" + " word" * 30))
    model.feed.listed("telco", listing(long_id[:-1] + "y", title="Long" + " word" * 30))
    model.apply()
    for sort in search.SORTS:
        page = model.search(q="word", sort=sort, limit=1)
        assert page["next_cursor"] and len(page["next_cursor"]) < 200, sort
        assert len(model.search(q="word", sort=sort, limit=1, cursor=page["next_cursor"])["items"]) == 1


def test_a_read_model_of_another_schema_is_rebuilt(tmp_path):
    from services.catalog.ingest import Ingest

    path = tmp_path / "catalog.sqlite"
    conn = open_model(path)
    conn.execute("UPDATE catalog_meta SET value = '0' WHERE key = 'schema_version'")
    old_id = conn.execute("SELECT value FROM catalog_meta WHERE key = 'model_id'").fetchone()[0]
    conn.close()
    ingest = Ingest("127.0.0.1:1", path)  # no broker needed: nothing is consumed here
    try:
        assert ingest.model_id != old_id and ingest.group == f"catalog-{ingest.model_id}"
    finally:
        ingest.consumer.store.close()
