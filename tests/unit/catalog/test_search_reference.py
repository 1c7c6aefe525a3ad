"""Search answers the same as the straightforward SQL it replaces: filters as FTS5 facet tokens in
the MATCH, bm25 over that MATCH, disjunctive counts grouped from ``listing_terms``.

services/catalog/search.py gets there another way (the text alone from FTS5, the filters and
counts from the facet cache's arrays, bm25 only for the rows that pass, no column filter when no
word can reach the facets column); this checks, on a random catalog changed in batches (so the
cache refreshes incrementally and its arrays grow), that the results, their order across
pages, the scores, the totals and every facet count are the same as the reference's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import sqlite3
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from catalogkit import Feed, apply_all, listing, open_model, reader

from services.catalog import search
from services.catalog.events import price_band
from services.catalog.facets import FacetCache
from services.catalog.search import FACETS, Query
from services.catalog.store import BM25_WEIGHTS, FACET_CODES, facet_token

WORDS = ("credit loan default deposit merchant card mortgage zone zoning hazard subscriber roaming plan churn "
         "device shipment waybill warehouse route freight invoice supplier capacity inventory quality").split()
LEVEL_OPS = {"L1": ("raw_download", "psi", "aggregation"), "L2": ("psi", "psi_cardinality", "aggregation"),
             "L3": ("psi", "psi_cardinality", "aggregation", "he_scoring"), "L4": ("aggregation", "he_scoring")}
INDUSTRIES = ("finance", "telecom", "logistics", "manufacturing")
TAGS = ("anti-fraud", "credit", "marketing", "risk", "kyc", "b2b", "iot", "sme", "retail", "route")
REGIONS = ("CN-GD", "CN-HK", "CN-MO", "Greater Bay Area")
CYCLES = ("daily", "monthly", "real-time", "static")
PROVIDERS = ("bank", "telco", "ship", "plant")
L3_TOKEN = facet_token("level", "L3")  # in one listing's description: text must not match the facets column


def payload(rng: random.Random, asset: str, n_tags: int | None = None) -> dict:
    level = rng.choice(tuple(LEVEL_OPS))
    words = rng.sample(WORDS, 6)
    model = rng.choice(("free", "fixed", "per_record"))
    return listing(asset, level=level, operations=tuple(rng.sample(LEVEL_OPS[level], rng.randint(1, 2))),
                   price={"model": model, "amount": 0 if model == "free" else rng.choice((1, 5, 100, 5000, 20000))},
                   title=f"{words[0].capitalize()} {words[1]} {words[2]}",
                   description=f"{' '.join(words[2:])} by district; {rng.choice(WORDS)} {rng.choice(WORDS)}.",
                   industry=rng.sample(INDUSTRIES, rng.randint(1, 2)),
                   tags=rng.sample(TAGS, rng.randint(0, 3) if n_tags is None else n_tags),
                   region=rng.choice(REGIONS), update_cycle=rng.choice(CYCLES), row_count=rng.choice((10, 20, 30)))


def batches(rng: random.Random) -> tuple[Feed, list[int]]:
    """Three batches of events (the feed, and where each batch ends): listings; more listings,
    updates (some with more tags than any before) and delistings; then more updates."""
    feed = Feed()
    for p in PROVIDERS:
        feed.member(p, f"{p.capitalize()} Co.")
    owners: dict[str, str] = {}

    def add(n: int) -> None:
        for _ in range(n):
            asset = f"{rng.choice(PROVIDERS)}.d{len(owners):03d}"
            owners[asset] = asset.split(".")[0]
            feed.listed(owners[asset], payload(rng, asset))

    add(60)
    marker = payload(rng, "bank.marker")
    marker["metadata"]["description"] = f"Holds the word {L3_TOKEN} in its text."
    feed.listed("bank", marker)
    legacy = feed.listed("ship", payload(rng, "ship.legacy"))  # committed before the contract: no region
    legacy.data["metadata"] = {"title": "Legacy waybill records", "industry": ["logistics"]}
    out = [len(feed.events)]
    add(90)
    for asset in rng.sample(sorted(owners), 25):
        feed.updated(owners[asset], payload(rng, asset, n_tags=rng.choice((None, 8))))
    for asset in rng.sample(sorted(owners), 10):
        feed.delisted(owners[asset], payload(rng, asset))
    out.append(len(feed.events))
    add(50)
    for asset in rng.sample(sorted(owners), 10):
        feed.updated(owners[asset], payload(rng, asset))
    out.append(len(feed.events))
    return feed, out


# -- the reference ------------------------------------------------------------------------------

def _match(conn: sqlite3.Connection, query: Query, skip: str | None = None) -> dict[int, float] | None:
    """doc -> bm25 (0.0 without text) of what matches the text and every filter but ``skip``, within
    the price range; None: no text and no filters (every listed listing, before the price range)."""
    parts = [f"({search.fts_query(query.q)})"] if query.q else []
    for facet in FACETS:
        values = query.filters.get(facet)
        if values and facet != skip:
            parts.append("facets : (" + " OR ".join(facet_token(facet, v) for v in sorted(set(values))) + ")")
    if parts:
        rows = conn.execute(f"SELECT rowid, bm25(listings_fts, {', '.join(map(str, BM25_WEIGHTS))}) FROM listings_fts "
                            "WHERE listings_fts MATCH ?", (" AND ".join(parts),)).fetchall()
    else:
        rows = conn.execute("SELECT doc_id, 0.0 FROM listings WHERE status = 'listed'").fetchall()
    price = dict(conn.execute("SELECT doc_id, price_amount FROM listings").fetchall())
    low = query.price_min if query.price_min is not None else -1
    high = query.price_max if query.price_max is not None else float("inf")
    return {d: s for d, s in rows if low <= price[d] <= high}


def _counts(conn: sqlite3.Connection, docs: dict[int, float], facet: str) -> dict[str, int]:
    """One facet's values over ``docs``: the listing's own column for one-valued facets (an empty
    value counts too), ``listing_terms`` for the others."""
    column = {"level": "level", "region": "region", "update_cycle": "update_cycle", "provider": "owner",
              "price_model": "price_model", "price_band": "price_amount"}.get(facet)
    found: Counter = Counter()
    for start in range(0, len(docs), 500):
        batch = list(docs)[start:start + 500]
        marks = ", ".join("?" * len(batch))
        if column:
            rows = conn.execute(f"SELECT {column} FROM listings WHERE doc_id IN ({marks})", batch).fetchall()
            found.update(price_band(v) if facet == "price_band" else v for (v,) in rows)
        else:
            found.update(dict(conn.execute(f"SELECT value, count(*) FROM listing_terms WHERE facet = ? AND doc_id IN "
                                           f"({marks}) GROUP BY value", (facet, *batch)).fetchall()))
    return dict(found)


def reference(conn: sqlite3.Connection, query: Query) -> dict:
    docs = _match(conn, query)
    sort = query.effective_sort
    rows = {r[0]: r[1:] for r in conn.execute("SELECT doc_id, id, height, first_height, title_key, price_amount, "
                                              "row_count FROM listings")}
    key = {"relevance": lambda d: (docs[d], rows[d][0]), "newest": lambda d: (-rows[d][1], rows[d][0]),
           "oldest": lambda d: (rows[d][2], rows[d][0]), "title": lambda d: (rows[d][3], rows[d][0]),
           "price_asc": lambda d: (rows[d][4], rows[d][0]), "price_desc": lambda d: (-rows[d][4], rows[d][0]),
           "rows_desc": lambda d: (-rows[d][5], rows[d][0])}[sort]
    ordered = sorted(docs, key=key)
    counts = {}
    for facet in FACETS:
        over = _match(conn, query, skip=facet) if query.filters.get(facet) else docs
        counts[facet] = _counts(conn, over, facet)
    return {"ids": [rows[d][0] for d in ordered], "scores": [-docs[d] if sort == "relevance" else None for d in ordered],
            "total": len(docs), "facets": counts}


def walk(conn: sqlite3.Connection, cache: FacetCache, query: Query) -> dict:
    """Every page of the catalog's own search, through its cursors."""
    ids, scores, cursor, first = [], [], None, None
    while True:
        page = search.search(conn, cache, dataclasses.replace(query, cursor=cursor))
        first = first or page
        assert page["total"] == first["total"]
        ids += [i["id"] for i in page["items"]]
        scores += [i["score"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return {"ids": ids, "scores": scores, "total": first["total"],
            "facets": {f: {v["value"]: v["count"] for v in values} for f, values in first["facets"].items()}}


def random_query(rng: random.Random) -> Query:
    q = rng.choice([None, rng.choice(WORDS), f"{rng.choice(WORDS)} {rng.choice(WORDS)}", rng.choice(WORDS)[:3] + "*",
                    "zon*", '"' + " ".join(rng.sample(WORDS, 2)) + '"', L3_TOKEN, "district"])
    values = {"level": tuple(LEVEL_OPS), "industry": INDUSTRIES, "tag": TAGS + ("nothing-like-it",),
              "region": REGIONS + ("",), "provider": PROVIDERS, "operation": ("psi", "aggregation", "he_scoring"),
              "update_cycle": CYCLES, "price_model": ("free", "fixed", "per_record"),
              "price_band": ("free", "1-99", "100-999", "10000+")}
    filters = {f: tuple(rng.sample(values[f], rng.choice((1, 1, 2)))) for f in rng.sample(FACETS, rng.choice((0, 1, 2, 3)))}
    return Query(q=q, filters=filters, sort=rng.choice((None, None, "title", "price_desc", "rows_desc")),
                 price_min=rng.choice((None, None, 5)), price_max=rng.choice((None, None, 5000)), limit=7)


@pytest.mark.parametrize("seed", [1, 2])
def test_search_answers_as_the_sql_reference(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "catalog.sqlite"
    writer, (feed, cuts) = open_model(path), batches(rng)
    conn, cache = reader(path), FacetCache()
    done, checked = 0, 0
    for cut in cuts:
        apply_all(writer, feed.events[done:cut])
        done = cut
        fixed = [Query(filters={"region": ("",)}), Query(q="legacy", filters={"region": ("", "CN-GD")}),
                 Query(q="waybill", filters={"region": ("",), "industry": ("logistics",)})]
        for query in fixed + [random_query(rng) for _ in range(40)]:
            expected, got = reference(conn, query), walk(conn, cache, query)
            assert got == expected, query
            checked += bool(expected["ids"])
    assert checked > 60  # most queries find something
    assert [i["id"] for i in search.search(conn, cache, Query(q=L3_TOKEN))["items"]] == ["bank.marker"]
    conn.close()
    writer.close()


def test_the_column_filter_is_left_out_only_when_no_word_can_reach_the_facets_column():
    assert all(code.startswith("z") for code in FACET_CODES.values())  # what leaving the filter out relies on
    scope = "{" + " ".join((*search.TEXT_COLUMNS, *search.CJK_COLUMNS)) + "} : "
    assert search.fts_query("credit risk", unscoped=True) == '("credit" "risk")'
    assert search.fts_query("cred*", unscoped=True) == '("cred"*)'
    assert all(search.fts_query(q) == search.fts_query(q, unscoped=True) for q in ("zone", "Zlv076051", "z*", "crédit"))
    assert search.fts_query("zone").startswith(scope)
    assert search.fts_query("credit 信贷", unscoped=True).startswith('("credit") AND {')  # Chinese: always its columns


def test_a_forged_cursor_key_of_the_wrong_type_is_a_bad_query(tmp_path):
    """A descending order's cursor holding text instead of a number is refused like any other
    forged cursor (it was a TypeError before the page was cut)."""
    writer, feed = open_model(tmp_path / "catalog.sqlite"), Feed()
    feed.member("bank", "Bank Co.")
    for i in range(3):
        feed.listed("bank", payload(random.Random(i), f"bank.d{i}"))
    apply_all(writer, feed.events)
    conn, cache = reader(tmp_path / "catalog.sqlite"), FacetCache()
    for sort in ("price_desc", "relevance"):
        query = Query(q="district", sort=sort, limit=1)
        assert search.search(conn, cache, query)["next_cursor"]
        body = json.dumps({"f": query.fingerprint(), "i": "bank.d0", "k": "text"}).encode()
        forged = base64.urlsafe_b64encode(body).decode().rstrip("=")
        with pytest.raises(search.BadQuery, match="cursor"):
            search.search(conn, cache, dataclasses.replace(query, cursor=forged))
    conn.close()
    writer.close()


def _unmark_by_character(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """How marks were first read, one character at a time: the reference."""
    plain, spans, opened = [], [], None
    for ch in marked:
        if ch == "\x02":
            opened = len(plain)
        elif ch == "\x03":
            if opened is not None:
                spans.append((opened, len(plain)))
            opened = None
        else:
            plain.append(ch)
    return "".join(plain), spans


@given(st.text(alphabet="交易所ab \x02\x03", max_size=30))
def test_marks_are_read_as_the_character_by_character_reference(marked):
    assert search._unmark(marked) == _unmark_by_character(marked)


def test_chinese_words_are_marked_with_fts5_marks_merged():
    assert search._mark_cjk("\x02数据\x03交易所", ["交易"]) == "\x02数据交易\x03所"  # touching: one mark
    assert search._mark_cjk("\x02数据\x03和交易所", ["交易"]) == "\x02数据\x03和\x02交易\x03所"
    assert search._mark_cjk("数\x02据交\x03易所", ["交易"]) == "数\x02据交易\x03所"  # overlapping: one mark
    assert search._mark_cjk("\x03交易\x02所", ["易所"]) == "交\x02易所\x03"  # stray marks mark nothing
