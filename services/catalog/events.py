"""What the catalog consumes, and how each event changes the read model.

Consumes ``rdx.chain.events.v1`` (published by the consensus relay, one event per committed
chain event, id ``<height>/<tx index>/<event index>``):

| event | effect |
|---|---|
| AssetListed, AssetUpdated | a new version; the listing is (re)indexed for search |
| AssetDelisted, AssetSuspended | a new version; the listing leaves search, its history stays |
| MemberRegistered | the provider's display name (searchable, shown on listings) |
| AccessGranted, AccessRejected, AccessRevoked, AccessExpired | a listing's grant counts |
| JobAuthorized, JobCompleted, JobFailed, JobAborted | a listing's usage counts |

Everything else on the topic is ignored. Emits: nothing. The catalog is a pure function of
the chain's topic (that is what makes a rebuild give the same index); what it offers other
services is its HTTP API.

Each handler is idempotent and order-tolerant on its own (a version older than the one held
changes only the history; counts are recomputed from rows keyed by grant and job id), on top
of the consumer applying each event id once. So events of different entities may arrive in
any order, as they would from several partitions, and the read model still ends up the same.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from pydantic import ValidationError

from services.common.events import Event
from services.catalog import cjk
from services.catalog.store import FTS_COLUMNS, facet_token
from services.common.listing import ListingMetadata, canonical_json

SEARCHABLE = "listed"
PRICE_BANDS = ((0, 0, "free"), (1, 99, "1-99"), (100, 999, "100-999"), (1000, 9999, "1000-9999"),
               (10_000, None, "10000+"))


def price_band(amount: int) -> str:
    for low, high, name in PRICE_BANDS:
        if amount >= low and (high is None or amount <= high):
            return name
    return PRICE_BANDS[-1][2]


def apply(event: Event, conn: sqlite3.Connection) -> None:
    """The consumer's handler: called once per event id, inside the consumer's transaction."""
    handler = HANDLERS.get(event.type)
    if handler is not None:
        handler(event, conn)


# -- listings ---------------------------------------------------------------------------------------

def read_metadata(raw: Any) -> tuple[dict[str, Any], bool]:
    """The metadata as the contract reads it, and whether it is valid under the contract.

    The chain validates metadata with the same contract, so invalid metadata comes only from
    blocks committed under an older contract. Such a listing is still a chain fact: it is
    indexed with what can be read (never dropped, never a dead letter).
    """
    try:
        return ListingMetadata.model_validate(raw).model_dump(), True
    except ValidationError:
        md = raw if isinstance(raw, dict) else {}

        def text(key: str, default: str = "") -> str:
            value = md.get(key)
            return value[:5000] if isinstance(value, str) else default

        def words(key: str) -> list[str]:
            value = md.get(key)
            return [v for v in value if isinstance(v, str)][:16] if isinstance(value, list) else []

        rows = md.get("row_count")
        return {"title": text("title", "(untitled)")[:200] or "(untitled)", "description": text("description"),
                "industry": words("industry"), "tags": words("tags"), "region": text("region")[:60],
                "update_cycle": text("update_cycle")[:20], "row_count": rows if type(rows) is int else 0,
                "columns": []}, False


def on_asset(event: Event, conn: sqlite3.Connection) -> None:
    d = event.data
    asset, version, height = d["asset"], int(d["version"]), int(d["height"])
    body = {k: d.get(k) for k in ("asset", "owner", "version", "status", "level", "operations", "commitment", "price",
                                  "min_group_size", "metadata")}
    conn.execute("INSERT OR IGNORE INTO listing_versions (id, version, event, status, height, tx_hash, event_id, "
                 "committed_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (asset, version, event.type, d["status"], height, d.get("tx_hash"), event.id,
                  event.occurred_at.isoformat(), canonical_json(body).decode()))
    current = conn.execute("SELECT doc_id, version, first_height FROM listings WHERE id = ?", (asset,)).fetchone()
    if current is not None and current[1] >= version:
        if height < current[2]:
            conn.execute("UPDATE listings SET first_height = ? WHERE id = ?", (height, asset))
        return  # an older version (or the same one again): history only
    md, valid = read_metadata(d.get("metadata"))
    price = d.get("price") or {}
    row = dict(id=asset, owner=d["owner"], version=version, status=d["status"], level=d["level"],
               region=md["region"], update_cycle=md["update_cycle"], price_model=price.get("model", "free"),
               price_amount=int(price.get("amount", 0)), row_count=md["row_count"], title=md["title"],
               title_key=md["title"].casefold(), first_height=min(height, current[2]) if current else height,
               height=height, tx_hash=d.get("tx_hash"), metadata_valid=int(valid),
               seq=conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM listings").fetchone()[0])
    if current is None:
        cols = ", ".join(row)
        doc_id = conn.execute(f"INSERT INTO listings ({cols}) VALUES ({', '.join('?' * len(row))})",
                              tuple(row.values())).lastrowid
    else:
        doc_id = current[0]
        conn.execute(f"UPDATE listings SET {', '.join(f'{k} = ?' for k in row)} WHERE doc_id = ?",
                     (*row.values(), doc_id))
    _reindex(conn, doc_id, row, d, md)


def _reindex(conn: sqlite3.Connection, doc_id: int, row: dict[str, Any], d: dict[str, Any], md: dict[str, Any]) -> None:
    """Search sees exactly the listed listings: a listing out of ``listed`` leaves the index."""
    conn.execute("DELETE FROM listings_fts WHERE rowid = ?", (doc_id,))
    conn.execute("DELETE FROM listing_terms WHERE doc_id = ?", (doc_id,))
    if row["status"] != SEARCHABLE:
        return
    terms = {("level", row["level"]), ("region", row["region"]), ("update_cycle", row["update_cycle"]),
             ("provider", row["owner"]), ("price_model", row["price_model"]),
             ("price_band", price_band(row["price_amount"]))}
    terms |= {("operation", op) for op in d.get("operations") or [] if isinstance(op, str)}
    terms |= {("industry", v) for v in md["industry"]} | {("tag", v) for v in md["tags"]}
    terms = sorted((facet, value) for facet, value in terms if value)
    texts = (md["title"], md["description"], " ".join([*md["industry"], *md["tags"]]),
             " ".join(f"{c['name']} {c.get('description', '')}" for c in md["columns"]),
             md["region"], _provider_text(conn, row["owner"]))
    conn.execute(f"INSERT INTO listings_fts (rowid, {', '.join(FTS_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * (len(FTS_COLUMNS) + 1))})",
                 (doc_id, *texts, *(cjk.index_text(t) for t in texts),
                  " ".join(facet_token(facet, value) for facet, value in terms)))
    conn.executemany("INSERT INTO listing_terms VALUES (?, ?, ?)", [(doc_id, facet, value) for facet, value in terms])


def _provider_text(conn: sqlite3.Connection, owner: str) -> str:
    member = conn.execute("SELECT name FROM members WHERE id = ?", (owner,)).fetchone()
    return f"{owner} {member[0]}" if member else owner


# -- members ----------------------------------------------------------------------------------------

def on_member(event: Event, conn: sqlite3.Connection) -> None:
    member, name = event.data["member"], str(event.data.get("name") or event.data["member"])
    conn.execute("INSERT INTO members VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                 (member, name))
    # The provider's name is searchable; a listing indexed before its member was known catches up.
    provider = _provider_text(conn, member)
    conn.execute("UPDATE listings_fts SET provider = ?, provider_cjk = ? WHERE rowid IN "
                 "(SELECT doc_id FROM listings WHERE owner = ? AND status = ?)",
                 (provider, cjk.index_text(provider), member, SEARCHABLE))


# -- grants and jobs --------------------------------------------------------------------------------

def on_access(event: Event, conn: sqlite3.Connection) -> None:
    d = event.data
    status = {"AccessGranted": "granted", "AccessRejected": "rejected", "AccessRevoked": "revoked",
              "AccessExpired": "expired"}[event.type]
    granted = int(status == "granted")
    conn.execute("INSERT INTO grants VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
                 "granted = max(granted, excluded.granted)", (d["grant"], d["asset"], status, granted))


def on_job_authorized(event: Event, conn: sqlite3.Connection) -> None:
    d = event.data
    conn.execute("INSERT INTO jobs VALUES (?, 'running') ON CONFLICT (id) DO NOTHING", (d["job"],))
    conn.executemany("INSERT OR IGNORE INTO job_inputs VALUES (?, ?)",
                     [(d["job"], item["asset"]) for item in d.get("inputs") or []])


def on_job_ended(event: Event, conn: sqlite3.Connection) -> None:
    status = {"JobCompleted": "completed", "JobFailed": "failed", "JobAborted": "aborted"}[event.type]
    conn.execute("INSERT INTO jobs VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET status = excluded.status",
                 (event.data["job"], status))


HANDLERS = {
    "AssetListed": on_asset, "AssetUpdated": on_asset, "AssetDelisted": on_asset, "AssetSuspended": on_asset,
    "MemberRegistered": on_member,
    "AccessGranted": on_access, "AccessRejected": on_access, "AccessRevoked": on_access, "AccessExpired": on_access,
    "JobAuthorized": on_job_authorized,
    "JobCompleted": on_job_ended, "JobFailed": on_job_ended, "JobAborted": on_job_ended,
}
CONSUMED = tuple(HANDLERS)
