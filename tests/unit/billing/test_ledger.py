"""The billing read model, fed the chain's own events (from the state machine driven directly),
equals the chain's balances and escrow; statements add up."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

from chainsim import Harness
from workload import mixed_workload

from services.billing import ledger
from services.common.events import Event
from services.common.identity import Identity
from services.consensus.relay import to_event


def chain_balances(h: Harness) -> tuple[dict, dict]:
    state = {k: json.loads(v) for k, v in h.db.conn.execute("SELECT key, value FROM kv")}
    balances = {k.rsplit("/", 1)[1]: v for k, v in state.items() if k.startswith("bank/balance/")}
    escrow = {k.rsplit("/", 1)[1]: v["amount"] for k, v in state.items() if k.startswith("bank/escrow/")}
    return balances, escrow


def feed(h: Harness, conn: sqlite3.Connection) -> None:
    """Every chain event to ``ledger.apply``; one of a type outside ``APPLIED_TYPES`` must write
    nothing (billing's consumer skips those, services/billing/events.py)."""
    for e in h.db.events_after((0, -2, -1), limit=100_000):
        before = conn.total_changes
        ledger.apply(Event.decode(to_event(e).encode()), conn)
        assert e.type in ledger.APPLIED_TYPES or conn.total_changes == before, e.type


def test_read_model_equals_chain_after_every_tx_type(tmp_path):
    assoc = Identity.generate("association")
    h = Harness(tmp_path / "c.sqlite", assoc)
    for who, type_, payload in mixed_workload(assoc, members=4):
        h.block(h.tx(who, type_, payload))
    conn = sqlite3.connect(":memory:")
    ledger.init(conn)
    feed(h, conn)
    balances, escrow = chain_balances(h)
    assert {m: b for m, b in ledger.balances(conn).items() if b or m in balances} == balances
    assert ledger.escrow(conn) == escrow
    # replaying the same events again changes nothing (ids are the primary key)
    feed(h, conn)
    assert {m: b for m, b in ledger.balances(conn).items() if b or m in balances} == balances


def test_statement_opening_plus_entries_is_closing_and_usage_is_grouped(tmp_path):
    assoc = Identity.generate("association")
    h = Harness(tmp_path / "c.sqlite", assoc)
    for who, type_, payload in mixed_workload(assoc, members=4, tag="s"):
        h.block(h.tx(who, type_, payload))
    conn = sqlite3.connect(":memory:")
    ledger.init(conn)
    feed(h, conn)
    balances, _ = chain_balances(h)
    middle = h.t0 + h.height * 5  # block times are t0 + 10 x height
    for member in balances:
        first = ledger.statement(conn, member, 0, middle)
        second = ledger.statement(conn, member, middle, 1e12)
        assert first["closing_balance"] == second["opening_balance"]
        assert second["closing_balance"] == balances[member]
        assert sum(second["totals_by_kind"].values()) == second["closing_balance"] - second["opening_balance"]
    usage = ledger.usage(conn, "s-m1", 0, 1e12)
    assert usage["as_provider"] and usage["as_provider"][0]["counterparty"] == "s-m0"
    invoice = ledger.invoice(conn, "s-m0", 0, 1e12)
    assert {line["asset"] for line in invoice["lines"]} == {"s.a0", "s.a1", "s.a2"}
    assert ledger.price_history(conn, "s.a0")[-1]["model"] == "per_record"
    assert datetime.fromtimestamp(invoice["lines"][0]["time"], timezone.utc).year >= 2023


def test_the_largest_charge_a_job_can_carry_settles_and_reconciles_and_a_larger_quote_is_refused(tmp_path):
    """price x records once overflowed the read model's INTEGER; the chain now bounds every amount a
    job moves by the largest max_price (10^15), so even that job's books add up to the chain's."""
    from chainsim import register

    from services.common.listing import example_metadata
    from services.common.tx import Code
    from services.consensus.jobs.messages import MAX_PRICE

    assoc = Identity.generate("association")
    bank, bn = Identity.generate("bank"), Identity.generate("bank.node")
    telco, tn = Identity.generate("telco"), Identity.generate("telco.node")
    h = Harness(tmp_path / "c.sqlite", assoc, balances={"bank": MAX_PRICE})
    h.block(register(h, bank, ("consumer",), bn), register(h, telco, ("provider",), tn))
    for asset, rows in (("t.max", 1_000), ("t.over", 1_001)):  # 10^12 per record
        h.block(h.tx(telco, "assets.List", {"id": asset, "level": "L2", "operations": ["aggregation"],
                                            "commitment": "ab" * 32, "price": {"model": "per_record", "amount": 10**12},
                                            "metadata": example_metadata(asset, row_count=rows)}))
        h.block(h.tx(bank, "access.Request", {"id": f"g-{asset}", "asset": asset, "operations": ["aggregation"],
                                              "purpose": "p", "expires_at": h.t0 + 10**6, "max_runs": 5}))
        h.block(h.tx(telco, "access.Approve", {"id": f"g-{asset}"}))
    [over] = h.block(h.tx(bank, "jobs.Submit", {"id": "j-over", "type": "aggregation", "max_price": MAX_PRICE,
                                                "inputs": [{"asset": "t.over", "grant": "g-t.over"}]}))
    assert over.code == Code.PRICE_TOO_LOW and "exceeds the largest max_price" in over.log
    [ok] = h.block(h.tx(bank, "jobs.Submit", {"id": "j-max", "type": "aggregation", "max_price": MAX_PRICE,
                                              "inputs": [{"asset": "t.max", "grant": "g-t.max"}]}))
    assert ok.code == Code.OK, ok.log
    h.block(h.tx(tn, "jobs.Attest", {"job": "j-max", "result_hash": "cd" * 32, "records_used": 10**9,
                                     "input_commitments": {"t.max": "ab" * 32}}),
            h.tx(bn, "jobs.Attest", {"job": "j-max", "result_hash": "cd" * 32, "records_used": 0,
                                     "input_commitments": {}}))
    conn = sqlite3.connect(":memory:")
    ledger.init(conn)
    feed(h, conn)
    balances, _ = chain_balances(h)
    assert balances["bank"] < MAX_PRICE // 100 and balances["telco"] > MAX_PRICE * 9 // 10  # charged in full
    assert {m: b for m, b in ledger.balances(conn).items() if b or m in balances} == balances
