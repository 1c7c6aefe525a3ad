"""Chain events as the consensus relay publishes them, for feeding the catalog's handler without
servers. The listing part of each event is built by the chain's own message model, so what
the catalog reads here is what the chain would store."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from services.catalog import events, store
from services.common.events import Event
from services.common.listing import example_metadata
from services.consensus.assets.handlers import LISTING_FIELDS
from services.consensus.assets.messages import List as ListMsg

COMMIT = "ab" * 32


def listing(asset: str, *, level: str = "L3", operations: tuple[str, ...] = ("psi",), price: dict | None = None,
            metadata: dict | None = None, **md_changes: Any) -> dict[str, Any]:
    """An assets.List payload that the chain accepts."""
    return {"id": asset, "level": level, "operations": list(operations), "commitment": COMMIT,
            "price": price or {"model": "fixed", "amount": 100}, "min_group_size": 1,
            "metadata": metadata or example_metadata(**md_changes)}


class Feed:
    """Numbered chain events: each call is one event in a new block."""

    def __init__(self) -> None:
        self.height = 0
        self.events: list[Event] = []
        self.versions: dict[str, int] = {}

    def _event(self, type_: str, entity: str, data: dict[str, Any]) -> Event:
        self.height += 1
        ev = Event(id=f"{self.height}/0/0", type=type_, entity=entity, source="consensus",
                   occurred_at=datetime.fromtimestamp(1_700_000_000 + self.height, timezone.utc),
                   data={**data, "height": self.height})
        self.events.append(ev)
        return ev

    def member(self, member: str, name: str) -> Event:
        return self._event("MemberRegistered", f"member:{member}", {"member": member, "name": name,
                                                                     "roles": ["provider"], "node": None})

    def asset(self, type_: str, owner: str, payload: dict[str, Any], status: str = "listed") -> Event:
        msg = ListMsg.model_validate(payload)
        version = self.versions.get(msg.id, 0) + 1
        self.versions[msg.id] = version
        return self._event(type_, f"asset:{msg.id}", {
            "asset": msg.id, "owner": owner, "version": version, "status": status,
            "tx_hash": f"{self.height + 1:064X}", **msg.model_dump(include=set(LISTING_FIELDS), exclude_none=True)})

    def listed(self, owner: str, payload: dict[str, Any]) -> Event:
        return self.asset("AssetListed", owner, payload)

    def updated(self, owner: str, payload: dict[str, Any]) -> Event:
        return self.asset("AssetUpdated", owner, payload)

    def delisted(self, owner: str, payload: dict[str, Any]) -> Event:
        return self.asset("AssetDelisted", owner, payload, status="delisted")

    def granted(self, grant: str, asset: str) -> Event:
        return self._event("AccessGranted", f"access:{grant}", {"grant": grant, "asset": asset, "consumer": "bank",
                                                                "provider": "telco", "operations": ["psi"]})

    def revoked(self, grant: str, asset: str) -> Event:
        return self._event("AccessRevoked", f"access:{grant}", {"grant": grant, "asset": asset, "consumer": "bank",
                                                                "reason": "ended"})

    def job(self, job: str, assets: list[str], end: str | None = "JobCompleted") -> None:
        self._event("JobAuthorized", f"job:{job}", {"job": job, "type": "psi", "consumer": "bank",
                                                     "inputs": [{"asset": a, "provider": "telco"} for a in assets]})
        if end:
            self._event(end, f"job:{job}", {"job": job, "type": "psi", "consumer": "bank", "reason": "",
                                            "result_hash": None})


def open_model(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    store.init(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS applied_events (event_id TEXT PRIMARY KEY, topic TEXT, applied_at REAL)")
    conn.execute("CREATE TABLE IF NOT EXISTS dead_letters (topic TEXT, partition INTEGER, \"offset\" INTEGER, "
                 "error TEXT, value BLOB, received_at REAL)")
    return conn


def apply_all(conn: sqlite3.Connection, evs: list[Event]) -> None:
    """What the idempotent consumer does per event: skip applied ids, else handler + id in one transaction."""
    for ev in evs:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT 1 FROM applied_events WHERE event_id = ?", (ev.id,)).fetchone():
            conn.execute("ROLLBACK")
            continue
        events.apply(ev, conn)
        conn.execute("INSERT INTO applied_events VALUES (?, 'rdx.chain.events.v1', 0)", (ev.id,))
        conn.execute("COMMIT")


def reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn
