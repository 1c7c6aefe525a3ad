"""An in-memory column store of every listing's facet values and sort keys, for one process.

Why: FTS5 finds and ranks text matches fast, but filtering and counting facet values over
thousands of matches in SQL costs a row lookup per match and facet, and an FTS5 facet token
in the query costs a pass over that value's whole doclist (tens of thousands of rows for a
common level or operation). Here each facet is a numpy array of value codes indexed by
doc_id, so filtering a set of matches by a facet, or counting its values, is one vectorised
pass over the matches (tens of microseconds for thousands). The arrays are a cache of the
``listings`` and ``listing_terms`` tables, refreshed incrementally: every change to a listing
gets the next ``seq``, and :meth:`FacetCache.refresh` reads only rows past the last ``seq`` it
saw. The first refresh reads everything (a few seconds at 110k listings).

A filter here means what the FTS5 ``facets`` column's tokens mean (services/catalog/events.py
indexes a token per non-empty value, exactly): a listing passes a facet's filter when it holds
one of the selected values; an empty value never matches.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from services.catalog.events import SEARCHABLE, price_band

SINGLE = ("level", "region", "update_cycle", "provider", "price_model", "price_band")
MULTI = ("operation", "industry", "tag")
SORT_KEYS = ("height", "first_height", "title_key", "price_amount", "row_count")
Docs = np.ndarray  # doc_ids, int64, ascending


class FacetCache:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # refresh, filtering, counting and sorting hold it; SQLite reads do not
        self.seq = 0
        self.listed_count = 0
        self.ids: list[str | None] = [None]  # doc_id -> listing id (index 0 unused)
        self.keys: dict[str, list[Any]] = {k: [None] for k in SORT_KEYS}
        # numpy columns by doc_id, with room to grow: code 0 is "no value" (and, in MULTI, an empty slot)
        self.listed = np.zeros(1, bool)
        self.price = np.zeros(1, np.int64)
        self.single: dict[str, np.ndarray] = {f: np.zeros(1, np.int32) for f in SINGLE}
        self.multi: dict[str, np.ndarray] = {f: np.zeros((1, 1), np.int32) for f in MULTI}  # a row per doc
        self.values: dict[str, list[Any]] = {f: [None] for f in (*SINGLE, *MULTI)}  # code -> value
        self._codes: dict[str, dict[Any, int]] = {f: {} for f in (*SINGLE, *MULTI)}  # value -> code
        self._all_counts: tuple[int, dict[str, dict[Any, int]]] | None = None

    # -- keeping up ----------------------------------------------------------------------------
    def refresh(self, conn: sqlite3.Connection) -> None:
        """Read the listings changed since the last refresh (call with ``lock`` held)."""
        latest = conn.execute("SELECT coalesce(max(seq), 0) FROM listings").fetchone()[0]
        if latest <= self.seq:
            return
        rows = conn.execute(
            "SELECT doc_id, id, status, level, region, update_cycle, owner, price_model, price_amount, row_count, "
            "title_key, height, first_height FROM listings WHERE seq > ? AND seq <= ?", (self.seq, latest)).fetchall()
        if not rows:  # the latest row changed again in between: the next refresh reads it
            self.seq = latest
            return
        (changed, asset_ids, statuses, levels, regions, cycles, owners, models, amounts, row_counts, title_keys,
         heights, first_heights) = zip(*rows)
        terms: dict[int, dict[str, list[str]]] = {}
        for start in range(0, len(changed), 500):
            batch = changed[start:start + 500]
            for doc_id, facet, value in conn.execute(
                    f"SELECT doc_id, facet, value FROM listing_terms WHERE doc_id IN ({', '.join('?' * len(batch))}) "
                    "AND facet IN ('operation', 'industry', 'tag')", batch):
                terms.setdefault(doc_id, {}).setdefault(facet, []).append(value)
        self._grow(max(changed))
        docs = np.array(changed, np.int64)
        listed = [status == SEARCHABLE for status in statuses]
        self.listed_count += sum(listed) - int(self.listed[docs].sum())
        self.listed[docs] = listed
        self.price[docs] = amounts
        singles = {"level": levels, "region": regions, "update_cycle": cycles, "provider": owners,
                   "price_model": models, "price_band": [price_band(amount) for amount in amounts]}
        for facet in SINGLE:
            known = self._codes[facet]  # a value seen before needs no call (codes start at 1)
            self.single[facet][docs] = [known.get(value) or self._code(facet, value) for value in singles[facet]]
        for facet in MULTI:  # a row of codes per doc, in any order, zeros after the last
            held = [terms.get(d, {}).get(facet, ()) for d in changed]
            width = max(map(len, held), default=0)
            if width > self.multi[facet].shape[1]:
                grown = np.zeros((len(self.multi[facet]), width), np.int32)
                grown[:, :self.multi[facet].shape[1]] = self.multi[facet]
                self.multi[facet] = grown
            width, known = self.multi[facet].shape[1], self._codes[facet]
            cells = [0] * (len(changed) * width)
            for k, values in enumerate(held):
                for j, value in enumerate(values):
                    cells[k * width + j] = known.get(value) or self._code(facet, value)
            self.multi[facet][docs] = np.array(cells, np.int32).reshape(len(changed), width)
        for key, column in zip(SORT_KEYS, (heights, first_heights, title_keys, amounts, row_counts)):
            for doc_id, value in zip(changed, column):
                self.keys[key][doc_id] = value
        for doc_id, asset_id in zip(changed, asset_ids):
            self.ids[doc_id] = asset_id
        self.seq = latest

    def _code(self, facet: str, value: Any) -> int:
        code = self._codes[facet].get(value)
        if code is None:
            code = self._codes[facet][value] = len(self.values[facet])
            self.values[facet].append(value)
        return code

    def _grow(self, doc_id: int) -> None:
        missing = doc_id + 1 - len(self.ids)
        if missing <= 0:
            return
        self.ids.extend([None] * missing)
        for column in self.keys.values():
            column.extend([None] * missing)
        size = len(self.ids)
        if size <= len(self.listed):
            return
        capacity = max(size, 2 * len(self.listed))  # amortised: arrays double when they grow

        def grown(array: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *array.shape[1:]), array.dtype)
            out[:len(array)] = array
            return out
        self.listed, self.price = grown(self.listed), grown(self.price)
        self.single = {f: grown(a) for f, a in self.single.items()}
        self.multi = {f: grown(a) for f, a in self.multi.items()}

    # -- reading -------------------------------------------------------------------------------
    def listed_docs(self) -> Docs:
        return np.flatnonzero(self.listed).astype(np.int64)

    def keep(self, docs: Iterable[int] | Docs | None, price_min: int | None, price_max: int | None) -> Docs:
        """The docs still listed here (FTS5 and this cache may be a few changes apart) within the price
        range; ``docs`` None: every listed listing."""
        if docs is None:
            out = self.listed_docs()
        else:
            out = np.asarray(docs, np.int64)
            out = out[out < len(self.ids)]
            out = out[self.listed[out]]
        if price_min is not None:
            out = out[self.price[out] >= price_min]
        if price_max is not None:
            out = out[self.price[out] <= price_max]
        return out

    def holds(self, docs: Docs, facet: str, values: Iterable[str]) -> np.ndarray:
        """A mask over ``docs``: which hold one of ``values`` in ``facet`` (an empty value matches nothing)."""
        known = self._codes[facet]
        held = self.single[facet][docs] if facet in self.single else self.multi[facet][docs]
        mask = np.zeros(held.shape, bool)
        for code in {known[v] for v in values if v and v in known}:
            mask |= held == code
        return mask if mask.ndim == 1 else mask.any(axis=1)

    def count(self, docs: Docs, facets: Iterable[str]) -> dict[str, dict[Any, int]]:
        """Per facet, how many of ``docs`` hold each value (values no doc holds are left out)."""
        out: dict[str, dict[Any, int]] = {}
        for facet in facets:
            held = self.single[facet][docs] if facet in self.single else self.multi[facet][docs].ravel()
            counts = np.bincount(held, minlength=len(self.values[facet]))
            counts[0] = 0  # no value
            found = np.flatnonzero(counts)
            names = self.values[facet]
            out[facet] = dict(zip([names[code] for code in found.tolist()], counts[found].tolist()))
        return out

    def count_all(self) -> dict[str, dict[Any, int]]:
        """Counts over every listed listing, kept until the next change (the catalog's front page)."""
        if self._all_counts is None or self._all_counts[0] != self.seq:
            self._all_counts = (self.seq, self.count(self.listed_docs(), (*SINGLE, *MULTI)))
        return self._all_counts[1]
