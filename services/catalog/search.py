"""Search over the read model: full text (FTS5, bm25), facets, filters, sorting, cursors.

Plain functions over a read-only SQLite connection and the process's facet cache; no HTTP here
(views.py maps requests to :class:`Query`).

How a query runs:
1. the text, if any, becomes a safe FTS5 expression over the text columns (:func:`fts_query`:
   words and "quoted phrases", all required; a trailing * makes a prefix; nothing else of
   FTS5's syntax reaches SQLite; a word holding Chinese becomes the phrase of its character
   bigrams, matched in the bigram copies of the text, see services/catalog/cjk.py), ANDed with
   one token per selected facet value, so FTS5
   intersects text and filters and bm25 ranks only what passes both;
2. the matches (doc ids, and their bm25 rank when sorting by relevance) are sorted and paged
   after the cursor with the facet cache's sort keys, ties broken by listing id;
3. facet counts, disjunctive: a facet with a selected value is counted over the matches of
   every filter but its own (one more FTS5 pass each), so its other values stay visible and
   can be added; every other facet is counted over the result set. Values within a facet are
   ORed, facets are ANDed;
4. the page's rows get their bodies, provider names and highlights from SQLite.

Without text or filters, in the default order (newest), the page comes straight from the SQL
index and the counts from the cache's memo of the whole catalog.
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

from services.catalog import cjk
from services.catalog.facets import FacetCache
from services.catalog.store import BM25_WEIGHTS, CJK_COLUMNS, TEXT_COLUMNS, facet_token

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
        return fts_query(self.q) if self.q else None

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


def fts_query(text: str) -> str | None:
    """User text -> an FTS5 expression of quoted terms (all required), or None if no words.

    ``credit risk`` -> ``"credit" "risk"`` over the text columns; ``"credit risk"`` -> a phrase;
    ``cred*`` -> a prefix; ``交易所`` -> the phrase ``"交易 易所"`` over the bigram copies.
    Operators, column filters and parentheses are not passed through: they are text.
    """
    terms = _terms(text)
    latin = [t for kind, t in terms if kind == "latin"]
    chinese = [cjk.query_phrase(w) for kind, w in terms if kind == "cjk"]
    parts = ([f"{_TEXT} : ({' '.join(latin)})"] if latin else []) + \
        ([f"{_CJK_TEXT} : ({' '.join(chinese)})"] if chinese else [])
    return " AND ".join(parts) or None


def match_expression(text: str | None, filters: dict[str, tuple[str, ...]], skip: str | None = None) -> str | None:
    """The FTS5 MATCH for the text and every facet filter but ``skip`` (None: match everything)."""
    parts = [f"({text})"] if text else []
    for facet in FACETS:
        values = filters.get(facet)
        if values and facet != skip:
            parts.append("facets : (" + " OR ".join(facet_token(facet, v) for v in sorted(set(values))) + ")")
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
    primary = match_expression(text, query.filters)
    ranked: dict[int, float] = {}
    docs: list[int] | None = None
    try:
        if sort == "relevance":
            cursor = conn.cursor()
            cursor.row_factory = None
            ranked = dict(cursor.execute(f"SELECT rowid, bm25(listings_fts, {_WEIGHTS}) FROM listings_fts "
                                         "WHERE listings_fts MATCH ?", (primary,)).fetchall())
            docs = list(ranked)
        elif primary is not None:
            docs = _match(conn, primary)
        others = {f: _match(conn, expr) if (expr := match_expression(text, query.filters, skip=f)) else None
                  for f in query.selected()} if query.facets else {}
    except sqlite3.OperationalError as exc:  # not expected: fts_query quotes every term
        raise BadQuery(f"q: cannot be searched ({exc})") from None

    with cache.lock:
        cache.refresh(conn)
        pool = None
        if docs is None and query.price_min is None and query.price_max is None and sort == "newest":
            page, total, more = _browse_page(conn, cache, query, after)
        else:
            pool = cache.keep(docs, query.price_min, query.price_max)
            total = len(pool)
            page, more = _page(cache, query, sort, pool, ranked, after)
        facets = _facets(cache, query, docs, pool, others) if query.facets else None
        keys = {d: _sort_key(cache, sort, d, ranked) for d in page}
        ids = {d: cache.ids[d] for d in page}
    items = _items(conn, page, ranked)
    if text and items:
        _highlight(conn, text, items, query.cjk_words)
    next_cursor = encode_cursor(query, keys[page[-1]], ids[page[-1]]) if more else None
    for item in items:
        item.pop("_doc_id")
    return {"total": total, "items": items, "next_cursor": next_cursor, "facets": facets, "sort": sort}


def _match(conn: sqlite3.Connection, expression: str) -> list[int]:
    cursor = conn.cursor()
    cursor.row_factory = None  # plain tuples: a Row object per match would cost more than the match
    return [r[0] for r in cursor.execute("SELECT rowid FROM listings_fts WHERE listings_fts MATCH ?", (expression,))]


def _sort_key(cache: FacetCache, sort: str, doc: int, ranked: dict[int, float]) -> Any:
    if sort == "relevance":
        return ranked[doc]
    key, _ = _SORT_KEYS[sort]
    return cache.keys[key][doc]


def _page(cache: FacetCache, query: Query, sort: str, pool: list[int], ranked: dict[int, float],
          after: tuple[Any, str] | None) -> tuple[list[int], bool]:
    ids = cache.ids
    if sort == "relevance":
        def order(d: int) -> tuple:
            return ranked[d], ids[d]
    else:
        column, descending = _SORT_KEYS[sort]
        values = cache.keys[column]
        if descending:
            def order(d: int) -> tuple:
                return -values[d], ids[d]
        else:
            def order(d: int) -> tuple:
                return values[d], ids[d]
    if after is not None:
        key, asset_id = after
        descending = sort != "relevance" and _SORT_KEYS[sort][1]
        mark = (-key if descending else key, asset_id)
        try:
            pool = [d for d in pool if order(d) > mark]
        except TypeError:
            raise BadQuery("cursor: not a cursor of this catalog") from None
    page = heapq.nsmallest(query.limit + 1, pool, key=order)
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


def _facets(cache: FacetCache, query: Query, docs: list[int] | None, pool: list[int] | None,
            others: dict[str, list[int] | None]) -> dict[str, list[dict[str, Any]]]:
    """``pool``: the result set (``docs`` kept by :meth:`FacetCache.keep`), None when browsing."""
    selected = query.selected()
    priced = query.price_min is not None or query.price_max is not None
    if docs is None and not priced:
        counts = dict(cache.count_all())
    else:
        counts = cache.count(pool, [f for f in FACETS if f not in selected])
    for facet in selected:  # disjunctive: over every filter but this facet's own
        matched = others.get(facet)
        if matched is None and not priced:
            counts[facet] = cache.count_all()[facet]
        else:
            counts[facet] = cache.count(cache.keep(matched, query.price_min, query.price_max), [facet])[facet]
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
    marks = ", ".join("?" * len(by_doc))
    rows = conn.execute(
        f"SELECT rowid, highlight(listings_fts, 0, ?, ?), snippet(listings_fts, 1, ?, ?, '…', 24), description "
        f"FROM listings_fts WHERE listings_fts MATCH ? AND rowid IN ({marks})",
        [_MARK_OPEN, _MARK_CLOSE, _MARK_OPEN, _MARK_CLOSE, text, *by_doc]).fetchall()
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


def _mark_cjk(marked: str, words: list[str]) -> str:
    """Add marks where the Chinese words stand to FTS5's marked text, merging overlaps."""
    plain: list[str] = []
    spans: list[tuple[int, int]] = []
    opened: int | None = None
    for ch in marked:
        if ch == _MARK_OPEN:
            opened = len(plain)
        elif ch == _MARK_CLOSE:
            if opened is not None:
                spans.append((opened, len(plain)))
            opened = None
        else:
            plain.append(ch)
    text = "".join(plain)
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
