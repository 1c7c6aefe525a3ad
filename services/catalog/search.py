"""Search over the read model: full text (FTS5, bm25), facets, filters, sorting, cursors.

Plain functions over a read-only SQLite connection and the process's facet cache; no HTTP here
(views.py maps requests to :class:`Query`).

How a query runs:
1. the text, if any, becomes a safe FTS5 expression (:func:`fts_query`: words and "quoted
   phrases", all required; a trailing * makes a prefix; nothing else of FTS5's syntax reaches
   SQLite; a word holding Chinese becomes the phrase of its character bigrams, matched in the
   bigram copies of the text, see services/catalog/cjk.py), and FTS5 returns the doc ids that
   match it, in one JSON array;
2. the facet cache (services/catalog/facets.py) keeps those still listed, within the price
   range, and holding a selected value of every filtered facet: the result set. Values within a
   facet are ORed, facets are ANDed. For each facet with a selected value it also keeps the
   matches of every filter but that facet's own, for the disjunctive counts;
3. with relevance order, bm25 of the text is computed for the result set only, in a second
   FTS5 pass (:func:`_rank`); the page after the cursor is cut by the sort key, ties broken by
   listing id;
4. facet counts, disjunctive: a facet with a selected value is counted over the matches of
   every filter but its own, so its other values stay visible and can be added; every other
   facet is counted over the result set;
5. the page's rows get their bodies and provider names from SQLite, and their highlights from
   one more FTS5 pass over the text's matches, restricted to the page.

Without text or filters, in the default order (newest), the page comes straight from the SQL
index and the counts from the cache's memo of the whole catalog.

The filters are not in the FTS5 query, though the index has a token per facet value (its
``facets`` column): in a MATCH, such a token costs bm25 a pass over that value's whole doclist
(tens of thousands of rows for a common level) to weigh a column that weighs nothing in the
score. The facets column stays in the index as what a filter means (tests check the cache's
filters against it) and because its tokens count in bm25's document length.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import html
import json
import re
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import orjson

from services.catalog import cjk
from services.catalog.facets import FacetCache
from services.catalog.store import BM25_WEIGHTS, CJK_COLUMNS, TEXT_COLUMNS

FACETS = ("level", "industry", "tag", "region", "provider", "operation", "update_cycle", "price_model", "price_band")
SORTS = ("relevance", "newest", "oldest", "title", "price_asc", "price_desc", "rows_desc")
MAX_TERMS = 16
FACET_VALUES_SHOWN = 50

# sort -> (cache key, also the SQL column; descending?); ties are always broken by listing id ascending.
_SORT_KEYS: dict[str, tuple[str, bool]] = {
    "newest": ("height", True),
    "oldest": ("first_height", False),
    "title": ("title_key", False),
    "price_asc": ("price_amount", False),
    "price_desc": ("price_amount", True),
    "rows_desc": ("row_count", True),
}
_WEIGHTS = ", ".join(str(w) for w in BM25_WEIGHTS)
_TEXT = "{" + " ".join((*TEXT_COLUMNS, *CJK_COLUMNS)) + "}"  # a word without CJK: any text column
_CJK_TEXT = "{" + " ".join(CJK_COLUMNS) + "}"  # a word with CJK: its bigram phrase, in the bigram copies
_MARK_OPEN, _MARK_CLOSE = "\x02", "\x03"
_MARKS = re.compile("[\x02\x03]")
_TOKEN = re.compile(r'"([^"]*)"|([^\s"]+)')
_WORD = re.compile(r"\w+", re.UNICODE)


class BadQuery(ValueError):
    """A query the catalog cannot answer; the message starts with the parameter at fault."""


@dataclass(frozen=True)
class Query:
    q: str | None = None
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    price_min: int | None = None
    price_max: int | None = None
    sort: str | None = None  # default: relevance with text, newest without
    limit: int = 20
    cursor: str | None = None
    facets: bool = True

    @cached_property
    def text(self) -> str | None:
        return fts_query(self.q, unscoped=True) if self.q else None

    @cached_property
    def cjk_words(self) -> list[str]:
        """The query's words holding CJK characters, marked in highlights by where they stand."""
        return [w for kind, w in _terms(self.q) if kind == "cjk"] if self.q else []

    @property
    def effective_sort(self) -> str:
        if self.sort is None or (self.sort == "relevance" and not self.text):
            return "relevance" if self.text else "newest"
        return self.sort

    def selected(self) -> list[str]:
        return [f for f in FACETS if self.filters.get(f)]

    def fingerprint(self) -> str:
        """What a cursor belongs to: the same text, filters and sort."""
        key = [self.q or "", sorted((k, sorted(v)) for k, v in self.filters.items() if v), self.price_min,
               self.price_max, self.effective_sort]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]


def _terms(text: str) -> list[tuple[str, str]]:
    """User text -> at most MAX_TERMS terms, each ("latin", quoted FTS5 term) or ("cjk", word).

    A quoted phrase holding CJK is taken word by word: its Chinese words are matched in the
    bigram copies, where Latin words standing alone are not indexed (services/catalog/cjk.py).
    """
    terms: list[tuple[str, str]] = []
    for phrase, word in _TOKEN.findall(text):
        if phrase:
            words = _WORD.findall(phrase)
            if any(cjk.has_cjk(w) for w in words):
                terms += [("cjk", w) if cjk.has_cjk(w) else ("latin", f'"{w}"') for w in words]
            elif words:
                terms.append(("latin", '"' + " ".join(words) + '"'))
            continue
        found = _WORD.findall(word)
        for i, w in enumerate(found):
            if cjk.has_cjk(w):
                terms.append(("cjk", w))
            else:
                terms.append(("latin", f'"{w}"' + ("*" if word.endswith("*") and i == len(found) - 1 else "")))
    return terms[:MAX_TERMS]


def fts_query(text: str, unscoped: bool = False) -> str | None:
    """User text -> an FTS5 expression of quoted terms (all required), or None if no words.

    ``credit risk`` -> ``"credit" "risk"`` over the text columns; ``"credit risk"`` -> a phrase;
    ``cred*`` -> a prefix; ``交易所`` -> the phrase ``"交易 易所"`` over the bigram copies.
    Operators, column filters and parentheses are not passed through: they are text.

    ``unscoped``: the Latin words without the column filter when none of them can match in the
    ``facets`` column, whose tokens all start with "z" (services/catalog/store.py): ASCII words
    without a "z" (neither case folding nor the stemmer makes one). The matches and bm25
    are the same (that column weighs 0); FTS5 then skips checking each match's columns, which
    made the text's pass about twice as fast.
    """
    terms = _terms(text)
    latin = [t for kind, t in terms if kind == "latin"]
    chinese = [cjk.query_phrase(w) for kind, w in terms if kind == "cjk"]
    scope = "" if unscoped and all(t.isascii() and "z" not in t.lower() for t in latin) else f"{_TEXT} : "
    parts = ([f"{scope}({' '.join(latin)})"] if latin else []) + \
        ([f"{_CJK_TEXT} : ({' '.join(chinese)})"] if chinese else [])
    return " AND ".join(parts) or None


# -- cursors -------------------------------------------------------------------------------------

def encode_cursor(query: Query, key: Any, asset_id: str) -> str:
    """Opaque, and short enough for a URL (under 200 characters): the last row's sort key and id.
    A title is not carried; it is read back by id (see :func:`decode_cursor`)."""
    body = {"f": query.fingerprint(), "i": asset_id}
    if not isinstance(key, str):
        body["k"] = key
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(conn: sqlite3.Connection, query: Query) -> tuple[Any, str] | None:
    if not query.cursor:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4)))
        fingerprint, asset_id = raw["f"], raw["i"]
        if query.effective_sort == "title":
            row = conn.execute("SELECT title_key FROM listings WHERE id = ?", (asset_id,)).fetchone()
            key = row[0] if row else None
        else:
            key = raw["k"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BadQuery("cursor: not a cursor of this catalog") from None
    if fingerprint != query.fingerprint():
        raise BadQuery("cursor: belongs to another query (keep q, the filters and sort)")
    if not isinstance(asset_id, str) or isinstance(key, bool) or not isinstance(key, (int, float, str)):
        raise BadQuery("cursor: not a cursor of this catalog")
    return key, asset_id


# -- the query ----------------------------------------------------------------------------------

def search(conn: sqlite3.Connection, cache: FacetCache, query: Query) -> dict[str, Any]:
    """One page of results, the total, the facet counts and the next cursor."""
    sort = query.effective_sort
    if sort not in SORTS:
        raise BadQuery(f"sort: one of {', '.join(SORTS)}")
    after = decode_cursor(conn, query)
    text = query.text
    if query.q and text is None:  # only punctuation: nothing can match
        return {"total": 0, "items": [], "next_cursor": None, "sort": sort,
                "facets": {f: [] for f in FACETS} if query.facets else None}
    priced = query.price_min is not None or query.price_max is not None
    everything = text is None and not query.selected() and not priced  # every listed listing
    try:
        docs = _match(conn, text) if text else None
    except sqlite3.OperationalError as exc:  # not expected: fts_query quotes every term
        raise BadQuery(f"q: cannot be searched ({exc})") from None

    pool: np.ndarray | None = None
    others: dict[str, np.ndarray | None] = {}
    with cache.lock:
        cache.refresh(conn)
        if not (everything and sort == "newest"):
            pool, others = _filter(cache, query, docs)
    ranked: dict[int, float] = {}
    if sort == "relevance":  # only with text: bm25 of the text, for the listings that pass the filters
        ranked = _rank(conn, text, pool, whole=len(pool) == len(docs))
        if len(ranked) < len(pool):  # delisted since the first read: gone from this one
            pool = pool[np.isin(pool, np.fromiter(ranked, np.int64, len(ranked)))]
    with cache.lock:
        if pool is None:
            page, total, more = _browse_page(conn, cache, query, after)
        else:
            total = len(pool)
            page, more = _page(cache, query, sort, pool.tolist(), ranked, after)
        facets = _facets(cache, query, None if everything else pool, others) if query.facets else None
        keys = {d: _sort_key(cache, sort, d, ranked) for d in page}
        ids = {d: cache.ids[d] for d in page}
    items = _items(conn, page, ranked)
    if text and items:
        _highlight(conn, text, items, query.cjk_words)
    next_cursor = encode_cursor(query, keys[page[-1]], ids[page[-1]]) if more else None
    for item in items:
        item.pop("_doc_id")
    return {"total": total, "items": items, "next_cursor": next_cursor, "facets": facets, "sort": sort}


def _match(conn: sqlite3.Connection, expression: str) -> np.ndarray:
    """The doc ids that match, ascending: one JSON array from SQLite (a Python row per match would
    cost more than the match)."""
    found = conn.execute("SELECT json_group_array(rowid) FROM listings_fts WHERE listings_fts MATCH ?",
                         (f"({expression})",)).fetchone()[0]
    return np.array(orjson.loads(found), np.int64)


def _rank(conn: sqlite3.Connection, text: str, pool: np.ndarray, whole: bool) -> dict[int, float]:
    """bm25 of the text for the listings in ``pool`` only (``whole``: the pool is every text match).

    The filters are not in this MATCH: an FTS5 facet token there would cost bm25 a pass over its
    whole doclist for the token's IDF, and add nothing to the score (the facets column weighs 0).
    ``+rowid`` keeps the pool out of FTS5's query plan (a rowid list there is one FTS5 query per
    id): FTS5 reads the text's matches once and bm25 runs only on the rows that pass.
    """
    if not len(pool):
        return {}
    cursor = conn.cursor()
    cursor.row_factory = None
    sql = f"SELECT rowid, bm25(listings_fts, {_WEIGHTS}) FROM listings_fts WHERE listings_fts MATCH ?"
    if whole:
        return dict(cursor.execute(sql, (f"({text})",)).fetchall())
    return dict(cursor.execute(sql + " AND +rowid IN (SELECT value FROM json_each(?))",
                               (f"({text})", orjson.dumps(pool.tolist()).decode())).fetchall())


def _filter(cache: FacetCache, query: Query, docs: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """The result set (``docs``, or every listing when None, through the price range and every facet
    filter), and, for each facet with a selected value, the docs that pass every filter but its
    own (None: every listed listing), which its disjunctive counts are taken over."""
    base = cache.keep(docs, query.price_min, query.price_max)
    holds = {f: cache.holds(base, f, query.filters[f]) for f in query.selected()}

    def passing(masks: list[np.ndarray]) -> np.ndarray:
        return base[np.logical_and.reduce(masks)] if masks else base

    pool = passing(list(holds.values()))
    if not query.facets:
        return pool, {}
    everywhere = docs is None and query.price_min is None and query.price_max is None
    others = {}
    for facet in holds:
        rest = [mask for f, mask in holds.items() if f != facet]
        others[facet] = None if everywhere and not rest else passing(rest)
    return pool, others


def _sort_key(cache: FacetCache, sort: str, doc: int, ranked: dict[int, float]) -> Any:
    if sort == "relevance":
        return ranked[doc]
    key, _ = _SORT_KEYS[sort]
    return cache.keys[key][doc]


def _page(cache: FacetCache, query: Query, sort: str, pool: list[int], ranked: dict[int, float],
          after: tuple[Any, str] | None) -> tuple[list[int], bool]:
    """The first ``limit`` docs of ``pool`` after the cursor, by the sort key, ties by listing id.

    The key alone picks the candidates (plain values, compared in C: no Python call per doc);
    only those up to the page's last key are ordered by (key, listing id).
    """
    ids = cache.ids
    descending = sort != "relevance" and _SORT_KEYS[sort][1]
    if sort == "relevance":
        keyed = [(ranked[d], d) for d in pool]
    else:
        values = cache.keys[_SORT_KEYS[sort][0]]
        keyed = [(-values[d], d) for d in pool] if descending else [(values[d], d) for d in pool]
    if after is not None:
        key, asset_id = after
        try:
            mark = -key if descending else key
            keyed = [(v, d) for v, d in keyed if v > mark or (v == mark and ids[d] > asset_id)]
        except TypeError:
            raise BadQuery("cursor: not a cursor of this catalog") from None
    wanted = query.limit + 1
    if len(keyed) > wanted:
        last = heapq.nsmallest(wanted, [v for v, _ in keyed])[-1]
        keyed = [(v, d) for v, d in keyed if v <= last]
    page = [d for _, d in sorted(keyed, key=lambda vd: (vd[0], ids[vd[1]]))[:wanted]]
    return page[: query.limit], len(page) > query.limit


def _browse_page(conn: sqlite3.Connection, cache: FacetCache, query: Query,
                 after: tuple[Any, str] | None) -> tuple[list[int], int, bool]:
    """No text, no filters, newest first: the page straight from the SQL index."""
    sql_column, descending = _SORT_KEYS[query.effective_sort]
    where, args = ["status = 'listed'"], []
    if after is not None:
        key, asset_id = after
        where.append(f"({sql_column} {'<' if descending else '>'} ? OR ({sql_column} = ? AND id > ?))")
        args += [key, key, asset_id]
    rows = conn.execute(f"SELECT doc_id FROM listings WHERE {' AND '.join(where)} "
                        f"ORDER BY {sql_column} {'DESC' if descending else 'ASC'}, id ASC LIMIT ?",
                        [*args, query.limit + 1]).fetchall()
    page = [r[0] for r in rows]
    for d in page:  # rows newer than the cache's last refresh
        if d >= len(cache.ids) or cache.ids[d] is None:
            cache.refresh(conn)
            break
    total = cache.listed_count
    return page[: query.limit], total, len(page) > query.limit


def _facets(cache: FacetCache, query: Query, pool: np.ndarray | None,
            others: dict[str, np.ndarray | None]) -> dict[str, list[dict[str, Any]]]:
    """``pool``: the result set, None for every listed listing; ``others``: see :func:`_filter`."""
    selected = query.selected()
    if pool is None:
        counts = dict(cache.count_all())
    else:
        counts = cache.count(pool, [f for f in FACETS if f not in selected])
    for facet in selected:  # disjunctive: over every filter but this facet's own
        matched = others[facet]
        counts[facet] = cache.count_all()[facet] if matched is None else cache.count(matched, [facet])[facet]
    out = {}
    for facet in FACETS:
        chosen = set(query.filters.get(facet) or ())
        values = sorted(counts.get(facet, {}).items(), key=lambda kv: (-kv[1], str(kv[0])))
        shown = values[:FACET_VALUES_SHOWN] + [(v, n) for v, n in values[FACET_VALUES_SHOWN:] if v in chosen]
        out[facet] = [{"value": v, "count": n, "selected": v in chosen} for v, n in shown if v is not None]
    return out


def _items(conn: sqlite3.Connection, page: list[int], ranked: dict[int, float]) -> list[dict[str, Any]]:
    if not page:
        return []
    marks = ", ".join("?" * len(page))
    rows = {r["doc_id"]: r for r in conn.execute(
        f"SELECT l.doc_id, l.id, l.owner, l.version, l.status, l.level, l.region, l.update_cycle, l.price_model, "
        f"l.price_amount, l.row_count, l.title, l.height, l.tx_hash, v.body, m.name AS provider_name "
        f"FROM listings l JOIN listing_versions v ON v.id = l.id AND v.version = l.version "
        f"LEFT JOIN members m ON m.id = l.owner WHERE l.doc_id IN ({marks})", page)}
    return [_item(rows[d], ranked.get(d)) for d in page if d in rows]


def _item(row: sqlite3.Row, rank: float | None) -> dict[str, Any]:
    body = json.loads(row["body"])
    md = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return {
        "id": row["id"], "title": row["title"],
        "provider": {"id": row["owner"], "name": row["provider_name"]},
        "level": row["level"], "operations": body.get("operations") or [], "region": row["region"],
        "industry": md.get("industry") or [], "tags": md.get("tags") or [], "update_cycle": row["update_cycle"],
        "price": {"model": row["price_model"], "amount": row["price_amount"]}, "row_count": row["row_count"],
        "version": row["version"], "status": row["status"],
        "proof": {"height": row["height"], "tx_hash": row["tx_hash"]},
        "score": -rank if rank is not None else None,
        "highlights": None, "_doc_id": row["doc_id"],
    }


def _highlight(conn: sqlite3.Connection, text: str, items: list[dict[str, Any]], cjk_words: list[str]) -> None:
    by_doc = {item["_doc_id"]: item for item in items}
    rows = conn.execute(  # +rowid: one FTS5 query for the page, not one per row (see _rank)
        "SELECT rowid, highlight(listings_fts, 0, ?, ?), snippet(listings_fts, 1, ?, ?, '…', 24), description "
        "FROM listings_fts WHERE listings_fts MATCH ? AND +rowid IN (SELECT value FROM json_each(?))",
        [_MARK_OPEN, _MARK_CLOSE, _MARK_OPEN, _MARK_CLOSE, text, orjson.dumps(list(by_doc)).decode()]).fetchall()
    for doc_id, title, snippet, description in rows:
        if cjk_words:  # FTS5 marks what matched in the text columns; Chinese matched in the bigram copies
            title = _mark_cjk(title, cjk_words)
            snippet = _mark_cjk(_cjk_snippet(snippet, description, cjk_words), cjk_words)
        by_doc[doc_id]["highlights"] = {"title": marked_html(title), "description": marked_html(snippet)}


def _cjk_snippet(snippet: str, description: str, words: list[str], before: int = 20, after: int = 40) -> str:
    """FTS5's snippet, or, when it holds none of the Chinese words, a window around the first."""
    plain = snippet.replace(_MARK_OPEN, "").replace(_MARK_CLOSE, "")
    if any(cjk.occurrences(w, plain) for w in words):
        return snippet
    found = sorted(span for w in words for span in cjk.occurrences(w, description))
    if not found:
        return snippet
    start, end = max(0, found[0][0] - before), min(len(description), found[0][1] + after)
    return ("…" if start else "") + description[start:end] + ("…" if end < len(description) else "")


def _unmark(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """FTS5's marked text -> the text and the spans marked in it (an open mark without its close,
    or a close without an open, marks nothing)."""
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    for count, mark in enumerate(_MARKS.finditer(marked)):
        at = mark.start() - count  # where the mark stands in the text without marks
        if mark.group() == _MARK_OPEN:
            opened = at
        else:
            if opened is not None:
                spans.append((opened, at))
            opened = None
    return _MARKS.sub("", marked), spans


def _mark_cjk(marked: str, words: list[str]) -> str:
    """Add marks where the Chinese words stand to FTS5's marked text, merging overlaps."""
    text, spans = _unmark(marked)
    spans += [span for w in words for span in cjk.occurrences(w, text)]
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, at = [], 0
    for start, end in merged:
        out += [text[at:start], _MARK_OPEN, text[start:end], _MARK_CLOSE]
        at = end
    return "".join([*out, text[at:]])


def marked_html(text: str | None) -> str | None:
    """Escape the text as HTML, then turn the match markers into <mark> tags (safe to render)."""
    if text is None:
        return None
    return html.escape(text, quote=False).replace(_MARK_OPEN, "<mark>").replace(_MARK_CLOSE, "</mark>")
