"""Reading one listing: its current version, its history with the on-chain proof of every
version, and its grant and usage counts. Plain functions over a read-only connection."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from services.catalog.drafts import Existing


class NotFound(LookupError):
    pass


def _version(row: sqlite3.Row, with_body: bool) -> dict[str, Any]:
    out = {"version": row["version"], "event": row["event"], "status": row["status"],
           "proof": {"height": row["height"], "tx_hash": row["tx_hash"], "event_id": row["event_id"],
                     "committed_at": row["committed_at"]}}
    if with_body:
        body = json.loads(row["body"])
        out.update({k: body.get(k) for k in ("level", "operations", "commitment", "price", "min_group_size",
                                             "metadata")})
    return out


def versions(conn: sqlite3.Connection, asset_id: str, *, with_body: bool = True) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM listing_versions WHERE id = ? ORDER BY version", (asset_id,)).fetchall()
    if not rows:
        raise NotFound(asset_id)
    return [_version(r, with_body) for r in rows]


def version(conn: sqlite3.Connection, asset_id: str, number: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM listing_versions WHERE id = ? AND version = ?", (asset_id, number)).fetchone()
    if row is None:
        raise NotFound(f"{asset_id} v{number}")
    return {"id": asset_id, **_version(row, True)}


def detail(conn: sqlite3.Connection, asset_id: str) -> dict[str, Any]:
    """The current version, every version's proof, and the counts. Delisted listings too."""
    row = conn.execute("SELECT l.*, m.name AS provider_name FROM listings l LEFT JOIN members m ON m.id = l.owner "
                       "WHERE l.id = ?", (asset_id,)).fetchone()
    if row is None:
        raise NotFound(asset_id)
    history = versions(conn, asset_id, with_body=False)
    current = version(conn, asset_id, row["version"])
    grants = conn.execute("SELECT coalesce(sum(granted), 0), coalesce(sum(status = 'granted'), 0) FROM grants "
                          "WHERE asset = ?", (asset_id,)).fetchone()
    jobs = conn.execute("SELECT count(*), coalesce(sum(j.status = 'completed'), 0) FROM job_inputs i "
                        "JOIN jobs j ON j.id = i.job WHERE i.asset = ?", (asset_id,)).fetchone()
    return {
        "id": asset_id,
        "status": row["status"],
        "searchable": row["status"] == "listed",
        "version": row["version"],
        "provider": {"id": row["owner"], "name": row["provider_name"]},
        **{k: current[k] for k in ("level", "operations", "commitment", "price", "min_group_size", "metadata")},
        "metadata_valid": bool(row["metadata_valid"]),
        "proof": current["proof"],
        "listed": history[0]["proof"],
        "versions": history,
        "grants": {"total": grants[0], "active": grants[1]},
        "usage": {"jobs": jobs[0], "completed": jobs[1]},
    }


def existing(conn: sqlite3.Connection, asset_id: str) -> Existing | None:
    row = conn.execute("SELECT owner, status, version FROM listings WHERE id = ?", (asset_id,)).fetchone()
    return Existing(row[0], row[1], row[2]) if row else None


def status(conn: sqlite3.Connection) -> dict[str, Any]:
    by_status = dict(conn.execute("SELECT status, count(*) FROM listings GROUP BY status").fetchall())
    last = conn.execute("SELECT event_id FROM applied_events ORDER BY rowid DESC LIMIT 1").fetchone()
    return {
        "listings": {"total": sum(by_status.values()), **{k: by_status[k] for k in sorted(by_status)}},
        "applied_events": conn.execute("SELECT count(*) FROM applied_events").fetchone()[0],
        "dead_letters": conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0],
        "last_event_id": last[0] if last else None,
    }
