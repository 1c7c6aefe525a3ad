"""The catalog's read model in SQLite: its tables, its connections, and a deterministic dump.

One database file holds the consumer's applied-event log (services/common/kafka.py) and the
read model the event handler writes (services/catalog/events.py), so both commit in one
transaction. The HTTP side reads through its own read-only connections (one per thread): in
WAL mode readers never wait for the writer.

Search documents are keyed by ``doc_id`` (the FTS5 rowid). doc_ids are an internal detail:
they follow the order events arrive in, so nothing that leaves the catalog (answers, cursors,
the dump) depends on them.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from services.common.listing import canonical_json

SCHEMA_VERSION = 2  # 2: the CJK bigram columns (services/catalog/cjk.py)

# The FTS5 columns people search, and bm25's weight for each (a word in the title counts most).
TEXT_COLUMNS = ("title", "description", "tags", "columns", "region", "provider")
_TEXT_WEIGHTS = (10.0, 2.0, 5.0, 1.0, 2.0, 2.0)
# Beside each, its Chinese words as overlapping bigrams (services/catalog/cjk.py), weighted as
# the column they come from; empty for text without CJK characters.
CJK_COLUMNS = tuple(f"{c}_cjk" for c in TEXT_COLUMNS)
BM25_WEIGHTS = (*_TEXT_WEIGHTS, *_TEXT_WEIGHTS, 0.0)  # the last: the facets column never ranks
# One more column, ``facets``, holds a token per facet value of the listing, so that filters are
# intersected by FTS5 itself and bm25 ranks only what passes them.
FTS_COLUMNS = (*TEXT_COLUMNS, *CJK_COLUMNS, "facets")
FACET_CODES = {"level": "zlv", "region": "zrg", "update_cycle": "zuc", "provider": "zpr", "price_model": "zpm",
               "price_band": "zpb", "operation": "zop", "industry": "zin", "tag": "ztg"}


def facet_token(facet: str, value: str) -> str:
    """One FTS5 token for a facet value: a code, then every UTF-8 byte as three digits.

    Exact (no hashing), one token under the unicode61 tokenizer, and untouched by the porter
    stemmer (which only strips letter suffixes; the token ends in a digit).
    """
    return FACET_CODES[facet] + "".join(f"{b:03d}" for b in value.encode())

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (id TEXT PRIMARY KEY, name TEXT NOT NULL);

-- The current version of every listing ever seen (any status); history is in listing_versions.
CREATE TABLE IF NOT EXISTS listings (
    doc_id INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    level TEXT NOT NULL,
    region TEXT NOT NULL,
    update_cycle TEXT NOT NULL,
    price_model TEXT NOT NULL,
    price_amount INTEGER NOT NULL,
    row_count INTEGER NOT NULL,
    title TEXT NOT NULL,
    title_key TEXT NOT NULL,
    first_height INTEGER NOT NULL,
    height INTEGER NOT NULL,
    tx_hash TEXT,
    metadata_valid INTEGER NOT NULL,
    seq INTEGER NOT NULL  -- the order of changes in this database, for readers' caches (not dumped)
);
CREATE INDEX IF NOT EXISTS listings_by_seq ON listings (seq);
-- Only the default browse order has an index; other orders sort in the readers' facet cache
-- (every index is one more page written per event).
CREATE INDEX IF NOT EXISTS listings_by_height ON listings (status, height DESC, id);
CREATE INDEX IF NOT EXISTS listings_by_owner ON listings (owner);

-- Every version as committed on chain, with its proof (height, tx hash, event id); ``body``
-- is the listing as the chain stored it (metadata exactly as signed).
CREATE TABLE IF NOT EXISTS listing_versions (
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    height INTEGER NOT NULL,
    tx_hash TEXT,
    event_id TEXT NOT NULL,
    committed_at TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (id, version)
);

-- Facet values of searchable (listed) listings only: one row per (listing, facet, value). Read
-- by doc_id (the facet cache); filtering by value goes through the FTS5 facets column, so no
-- index by value (it would cost a page per facet value on every write).
CREATE TABLE IF NOT EXISTS listing_terms (
    doc_id INTEGER NOT NULL,
    facet TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (doc_id, facet, value)
) WITHOUT ROWID;

-- Full text of searchable (listed) listings only: a delisted listing leaves the index.
CREATE VIRTUAL TABLE IF NOT EXISTS listings_fts USING fts5(
    {", ".join(FTS_COLUMNS)}, tokenize = 'porter unicode61 remove_diacritics 2');

-- Grants and jobs, only to count them per listing.
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, asset TEXT NOT NULL, status TEXT NOT NULL, granted INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS grants_by_asset ON grants (asset);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_inputs (
    job TEXT NOT NULL, asset TEXT NOT NULL, PRIMARY KEY (asset, job)) WITHOUT ROWID;
"""


class SchemaMismatch(RuntimeError):
    """The database was written by another version of the read model: rebuild it."""


def init(conn: sqlite3.Connection) -> str:
    """Create the tables (idempotent) and return this read model's id.

    The id is made once, when the database is created, and names the Kafka consumer group: an
    empty read model gets a new group, so it reads the topic from offset 0 (a rebuild), and
    each replica with its own database reads the whole topic.
    """
    conn.executescript(SCHEMA)
    row = conn.execute("SELECT value FROM catalog_meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO catalog_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("INSERT INTO catalog_meta VALUES ('model_id', ?)", (uuid.uuid4().hex[:16],))
    elif int(row[0]) != SCHEMA_VERSION:
        raise SchemaMismatch(f"the read model has schema {row[0]}, this catalog writes {SCHEMA_VERSION}")
    return conn.execute("SELECT value FROM catalog_meta WHERE key = 'model_id'").fetchone()[0]


def tune(conn: sqlite3.Connection) -> None:
    """Readers: pages come through the memory map (the OS's page cache, shared by every connection
    of the process); each connection's own page cache stays small, as there is one per thread.

    The map covers the whole file up to SQLite's cap (2 GiB of address space, not of memory): a
    page beyond the map is a read() into the connection's cache, and the bench's 110k listings
    make a 458 MB file, of which the 256 MiB map this replaced left 44% to reads.
    """
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA cache_size = -16384")  # 16 MiB
    conn.execute("PRAGMA mmap_size = 2147418112")  # SQLite's default maximum; a larger value is cut to it


class Readers:
    """Read-only connections to the read model, one per thread (sqlite3 objects are not shared)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            tune(conn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


# -- the deterministic dump -----------------------------------------------------------------------

def dump(conn: sqlite3.Connection) -> dict[str, Any]:
    """Everything the read model holds, independent of doc_ids and arrival times, in a fixed order.

    Two read models built from the same events, in any order and any number of times, dump
    the same. (The applied-event log is included by its ids: its timestamps are local.)
    """
    def rows(sql: str) -> list[list[Any]]:
        return [list(r) for r in conn.execute(sql)]

    listing_cols = ("id, owner, version, status, level, region, update_cycle, price_model, price_amount, row_count, "
                    "title, title_key, first_height, height, tx_hash, metadata_valid")
    return {
        "schema_version": SCHEMA_VERSION,
        "members": rows("SELECT id, name FROM members ORDER BY id"),
        "listings": rows(f"SELECT {listing_cols} FROM listings ORDER BY id"),
        "versions": rows("SELECT id, version, event, status, height, tx_hash, event_id, committed_at, body "
                         "FROM listing_versions ORDER BY id, version"),
        "terms": rows("SELECT l.id, t.facet, t.value FROM listing_terms t JOIN listings l USING (doc_id) "
                      "ORDER BY l.id, t.facet, t.value"),
        "fts": rows(f"SELECT l.id, {', '.join('f.' + c for c in FTS_COLUMNS)} FROM listings_fts f "
                    "JOIN listings l ON l.doc_id = f.rowid ORDER BY l.id"),
        "grants": rows("SELECT id, asset, status, granted FROM grants ORDER BY id"),
        "jobs": rows("SELECT id, status FROM jobs ORDER BY id"),
        "job_inputs": rows("SELECT job, asset FROM job_inputs ORDER BY job, asset"),
        "applied_events": [r[0] for r in conn.execute("SELECT event_id FROM applied_events ORDER BY event_id")]
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'applied_events'").fetchone() else [],
    }


def digest(conn: sqlite3.Connection) -> str:
    """SHA-256 of the canonical JSON of :func:`dump`."""
    return hashlib.sha256(canonical_json(dump(conn))).hexdigest()
