"""The billing read model: every credit movement on chain as a ledger entry, the escrow of open
jobs, usage by asset and counterparty, and each asset's price history — built only from
``rdx.chain.events.v1``, so replaying the topic rebuilds it exactly.

Amounts are stored as decimal TEXT and added up in Python, never by SQLite: an SQLite INTEGER
(and its ``sum``) stops at 2^63 - 1, and a credit movement the read model cannot store would be
dead-lettered and leave it behind the chain. Python ints have no bound, so any amount the chain
ever records (bounded there too, docs/billing.md) is kept exactly, and so is every total."""

from __future__ import annotations

import sqlite3
from typing import Any

from services.common.events import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    event_id TEXT NOT NULL, line INTEGER NOT NULL, height INTEGER NOT NULL, time REAL NOT NULL,
    member TEXT NOT NULL, amount TEXT NOT NULL, kind TEXT NOT NULL,
    counterparty TEXT, job TEXT, reference TEXT, PRIMARY KEY (event_id, line));
CREATE INDEX IF NOT EXISTS ledger_member ON ledger(member, time);
CREATE TABLE IF NOT EXISTS escrow (job TEXT PRIMARY KEY, consumer TEXT NOT NULL, amount TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS job_inputs (job TEXT NOT NULL, asset TEXT NOT NULL, provider TEXT NOT NULL,
    PRIMARY KEY (job, asset));
CREATE TABLE IF NOT EXISTS usage (
    job TEXT NOT NULL, asset TEXT NOT NULL, provider TEXT NOT NULL, consumer TEXT NOT NULL,
    charge TEXT NOT NULL, height INTEGER NOT NULL, time REAL NOT NULL, PRIMARY KEY (job, asset));
CREATE TABLE IF NOT EXISTS demand_prices (
    asset TEXT NOT NULL, event_id TEXT PRIMARY KEY, price TEXT NOT NULL, height INTEGER NOT NULL,
    time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS prices (
    asset TEXT NOT NULL, version INTEGER NOT NULL, model TEXT NOT NULL, amount TEXT NOT NULL,
    height INTEGER NOT NULL, time REAL NOT NULL, PRIMARY KEY (asset, version));
"""


AMOUNT_COLUMNS = {"ledger": "amount", "escrow": "amount", "usage": "charge", "demand_prices": "price",
                  "prices": "amount"}


def init(conn: sqlite3.Connection) -> None:
    _migrate(conn)
    conn.executescript(SCHEMA)


def _migrate(conn: sqlite3.Connection) -> None:
    """A read model made before amounts were TEXT: its INTEGER amounts copied as decimal text."""
    for table, column in AMOUNT_COLUMNS.items():
        types = {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({table})")}
        if types.get(column, "TEXT").upper() == "TEXT":
            continue
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_integer")
        conn.executescript(SCHEMA)
        names = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
        picks = ", ".join(f"CAST({n} AS TEXT)" if n == column else n for n in names)
        conn.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {picks} FROM {table}_integer")
        conn.execute(f"DROP TABLE {table}_integer")
    conn.commit()


def as_text(value: Any) -> str:
    """An amount from an event as decimal text; anything but an integer is refused (dead-lettered)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"an amount must be an integer, got {type(value).__name__}")
    return str(value)


def _total(values) -> int:
    return sum(int(v) for v in values)


# The chain events ``apply`` acts on. Every other one leaves the read model as it is (a settlement's
# JobAttested, JobLocked, JobReleased and JobCompleted, among others): the consumer skips those
# without proving them or recording their ids (services/billing/events.py).
APPLIED_TYPES = frozenset({"CreditsDeposited", "CreditsWithdrawn", "CreditsTransferred", "EscrowHeld", "JobSettled",
                           "JobAuthorized", "DynamicPriceChanged", "AssetListed", "AssetUpdated"})


def apply(event: Event, conn: sqlite3.Connection) -> None:
    """The consumer's handler: runs inside the consumer's transaction, once per event id. An event
    whose type is not in ``APPLIED_TYPES`` writes nothing."""
    d, at, height = event.data, event.occurred_at.timestamp(), event.data.get("height", 0)
    lines: list[tuple[str, int, str, str | None, str | None, str | None]] = []
    if event.type == "CreditsDeposited":
        lines.append((d["member"], d["amount"], "deposit", None, None, d["reference"]))
    elif event.type == "CreditsWithdrawn":
        lines.append((d["member"], -d["amount"], "withdrawal", None, None, d["reference"]))
    elif event.type == "CreditsTransferred":
        lines += [(d["sender"], -d["amount"], "transfer_out", d["to"], None, d.get("memo")),
                  (d["to"], d["amount"], "transfer_in", d["sender"], None, d.get("memo"))]
    elif event.type == "EscrowHeld":
        lines.append((d["consumer"], -d["amount"], "escrow_hold", None, d["job"], None))
        conn.execute("INSERT OR REPLACE INTO escrow VALUES (?, ?, ?)", (d["job"], d["consumer"], as_text(d["amount"])))
    elif event.type == "JobSettled":
        for member, amount in sorted(d["payouts"].items()):
            lines.append((member, amount, "job_payout", d["consumer"], d["job"], None))
        if d["refunded"]:
            lines.append((d["consumer"], d["refunded"], "escrow_refund", None, d["job"], None))
        conn.execute("DELETE FROM escrow WHERE job = ?", (d["job"],))
        owners = dict(conn.execute("SELECT asset, provider FROM job_inputs WHERE job = ?", (d["job"],)).fetchall())
        for asset, charge in sorted(d.get("charges", {}).items()):
            conn.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (d["job"], asset, owners.get(asset, "?"), d["consumer"], as_text(charge), height, at))
    elif event.type == "JobAuthorized":
        conn.executemany("INSERT OR REPLACE INTO job_inputs VALUES (?, ?, ?)",
                         [(d["job"], i["asset"], i["provider"]) for i in d["inputs"]])
    elif event.type == "DynamicPriceChanged":
        conn.execute("INSERT OR REPLACE INTO demand_prices VALUES (?, ?, ?, ?, ?)",
                     (d["asset"], event.id, as_text(d["price"]), height, at))
    elif event.type in ("AssetListed", "AssetUpdated"):
        conn.execute("INSERT OR REPLACE INTO prices VALUES (?, ?, ?, ?, ?, ?)",
                     (d["asset"], d["version"], d["price"]["model"], as_text(d["price"].get("amount", 0)), height, at))
    conn.executemany("INSERT OR REPLACE INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(event.id, n, height, at, member, as_text(value), *rest)
                      for n, (member, value, *rest) in enumerate(lines)])


def balances(conn: sqlite3.Connection) -> dict[str, int]:
    out: dict[str, int] = {}
    for member, value in conn.execute("SELECT member, amount FROM ledger"):
        out[member] = out.get(member, 0) + int(value)
    return out


def escrow(conn: sqlite3.Connection) -> dict[str, int]:
    return {job: int(value) for job, value in conn.execute("SELECT job, amount FROM escrow")}


def supply(conn: sqlite3.Connection) -> int:
    """Credits issued less credits withdrawn, as the read model saw them (the chain's ``bank/supply``)."""
    return _total(v for (v,) in conn.execute("SELECT amount FROM ledger WHERE kind IN ('deposit', 'withdrawal')"))


def statement(conn: sqlite3.Connection, member: str, since: float, until: float) -> dict[str, Any]:
    opening = _total(v for (v,) in conn.execute("SELECT amount FROM ledger WHERE member = ? AND time < ?",
                                                (member, since)))
    rows = conn.execute("SELECT event_id, height, time, amount, kind, counterparty, job, reference FROM ledger "
                        "WHERE member = ? AND time >= ? AND time < ? ORDER BY height, event_id, line",
                        (member, since, until)).fetchall()
    entries = [dict(zip(("event_id", "height", "time", "amount", "kind", "counterparty", "job", "reference"),
                        (*r[:3], int(r[3]), *r[4:]))) for r in rows]
    totals: dict[str, int] = {}
    for e in entries:
        totals[e["kind"]] = totals.get(e["kind"], 0) + e["amount"]
    return {"member": member, "since": since, "until": until, "opening_balance": opening,
            "closing_balance": opening + sum(e["amount"] for e in entries), "totals_by_kind": totals,
            "entries": entries}


def invoice(conn: sqlite3.Connection, member: str, since: float, until: float) -> dict[str, Any]:
    """What ``member`` was charged as a consumer in the period, line by line (asset, provider)."""
    rows = conn.execute("SELECT job, asset, provider, charge, height, time FROM usage "
                        "WHERE consumer = ? AND time >= ? AND time < ? ORDER BY height, job, asset",
                        (member, since, until)).fetchall()
    lines = [dict(zip(("job", "asset", "provider", "charge", "height", "time"), (*r[:3], int(r[3]), *r[4:])))
             for r in rows]
    charged = -_total(v for (v,) in conn.execute("SELECT amount FROM ledger WHERE member = ? AND kind IN "
                                                 "('escrow_hold', 'escrow_refund') AND time >= ? AND time < ?",
                                                 (member, since, until)))
    return {"member": member, "since": since, "until": until, "lines": lines,
            "listed_charges": sum(line["charge"] for line in lines), "net_paid": charged}


def usage(conn: sqlite3.Connection, member: str, since: float, until: float) -> dict[str, Any]:
    """Usage of ``member``'s data by asset and counterparty, and its own use of others' data."""
    def grouped(sql: str) -> list[dict]:
        groups: dict[tuple[str, str], list[int]] = {}
        for asset, counterparty, charge in conn.execute(sql, (member, since, until)):
            groups.setdefault((asset, counterparty), []).append(int(charge))
        return [{"asset": a, "counterparty": c, "jobs": len(v), "charged": sum(v)} for (a, c), v in sorted(groups.items())]
    return {
        "member": member,
        "as_provider": grouped("SELECT asset, consumer, charge FROM usage WHERE provider = ? AND time >= ? AND time < ?"),
        "as_consumer": grouped("SELECT asset, provider, charge FROM usage WHERE consumer = ? AND time >= ? AND time < ?"),
    }


def price_history(conn: sqlite3.Connection, asset: str) -> list[dict[str, Any]]:
    """Listed prices by version, and for a dynamic price every move demand made, in chain order."""
    rows = conn.execute("SELECT version, model, amount, height, time FROM prices WHERE asset = ? "
                        "UNION ALL SELECT NULL, 'dynamic (demand)', price, height, time FROM demand_prices "
                        "WHERE asset = ? ORDER BY height", (asset, asset)).fetchall()
    return [dict(zip(("version", "model", "amount", "height", "time"), (r[0], r[1], int(r[2]), *r[3:]))) for r in rows]
