"""An in-memory column store of every listing's facet values and sort keys, for one process.

Why: FTS5 finds and ranks matches fast, but counting facet values over thousands of matches
in SQL costs a row lookup per match and facet (tens of milliseconds at 100k listings); plain
Python lists indexed by doc_id count the same in about a millisecond. The lists are a cache
of the ``listings`` and ``listing_terms`` tables, refreshed incrementally: every change to a
listing gets the next ``seq``, and :meth:`FacetCache.refresh` reads only rows past the last
``seq`` it saw. The first refresh reads everything (about a second at 100k listings).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable
from itertools import chain
from typing import Any

from services.catalog.events import SEARCHABLE, price_band

SINGLE = ("level", "region", "update_cycle", "provider", "price_model", "price_band")
MULTI = ("operation", "industry", "tag")
SORT_KEYS = ("height", "first_height", "title_key", "price_amount", "row_count")


class FacetCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # refresh, counting and sorting hold it; SQLite reads do not
        self.seq = 0
        self.listed_count = 0
        self.ids: list[str | None] = [None]  # doc_id -> listing id (index 0 unused)
        self.listed: list[bool] = [False]
        self.single: dict[str, list[Any]] = {f: [None] for f in SINGLE}
        self.multi: dict[str, list[tuple[str, ...]]] = {f: [()] for f in MULTI}
        self.keys: dict[str, list[Any]] = {k: [None] for k in SORT_KEYS}
        self._all_counts: tuple[int, dict[str, Counter]] | None = None

    # -- keeping up ----------------------------------------------------------------------------
    def refresh(self, conn: sqlite3.Connection) -> None:
        """Read the listings changed since the last refresh (call with ``lock`` held)."""
        latest = conn.execute("SELECT coalesce(max(seq), 0) FROM listings").fetchone()[0]
        if latest <= self.seq:
            return
        rows = conn.execute(
            "SELECT doc_id, id, status, level, region, update_cycle, owner, price_model, price_amount, row_count, "
            "title_key, height, first_height FROM listings WHERE seq > ? AND seq <= ?", (self.seq, latest)).fetchall()
        changed = [r[0] for r in rows]
        terms: dict[int, dict[str, list[str]]] = {}
        for start in range(0, len(changed), 500):
            batch = changed[start:start + 500]
            for doc_id, facet, value in conn.execute(
                    f"SELECT doc_id, facet, value FROM listing_terms WHERE doc_id IN ({', '.join('?' * len(batch))}) "
                    "AND facet IN ('operation', 'industry', 'tag')", batch):
                terms.setdefault(doc_id, {}).setdefault(facet, []).append(value)
        for (doc_id, asset_id, status, level, region, cycle, owner, price_model, price_amount, row_count, title_key,
             height, first_height) in rows:
            self._grow(doc_id)
            self.ids[doc_id] = asset_id
            now_listed = status == SEARCHABLE
            self.listed_count += int(now_listed) - int(self.listed[doc_id])
            self.listed[doc_id] = now_listed
            for facet, value in zip(SINGLE, (level, region, cycle, owner, price_model, price_band(price_amount))):
                self.single[facet][doc_id] = value
            mine = terms.get(doc_id, {})
            for facet in MULTI:
                self.multi[facet][doc_id] = tuple(sorted(mine.get(facet, ())))
            for key, value in zip(SORT_KEYS, (height, first_height, title_key, price_amount, row_count)):
                self.keys[key][doc_id] = value
        self.seq = latest

    def _grow(self, doc_id: int) -> None:
        missing = doc_id + 1 - len(self.ids)
        if missing <= 0:
            return
        self.ids.extend([None] * missing)
        self.listed.extend([False] * missing)
        for column in (*self.single.values(), *self.keys.values()):
            column.extend([None] * missing)
        for column in self.multi.values():
            column.extend([()] * missing)

    # -- reading -------------------------------------------------------------------------------
    def listed_docs(self) -> list[int]:
        listed = self.listed
        return [d for d in range(1, len(listed)) if listed[d]]

    def keep(self, docs: Iterable[int] | None, price_min: int | None, price_max: int | None) -> list[int]:
        """The docs still listed here (FTS5 and this cache may be a few changes apart) within the price
        range; ``docs`` None: every listed listing."""
        listed, price = self.listed, self.keys["price_amount"]
        size = len(listed)
        if docs is None:
            out = self.listed_docs()
        else:
            out = [d for d in docs if d < size and listed[d]]
        if price_min is not None:
            out = [d for d in out if price[d] >= price_min]
        if price_max is not None:
            out = [d for d in out if price[d] <= price_max]
        return out

    def count(self, docs: list[int], facets: Iterable[str]) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for facet in facets:
            if facet in self.single:
                out[facet] = Counter(map(self.single[facet].__getitem__, docs))
            else:
                out[facet] = Counter(chain.from_iterable(map(self.multi[facet].__getitem__, docs)))
        return out

    def count_all(self) -> dict[str, Counter]:
        """Counts over every listed listing, kept until the next change (the catalog's front page)."""
        if self._all_counts is None or self._all_counts[0] != self.seq:
            self._all_counts = (self.seq, self.count(self.listed_docs(), (*SINGLE, *MULTI)))
        return self._all_counts[1]
