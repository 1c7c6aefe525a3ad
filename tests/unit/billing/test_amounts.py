"""Issue 16, part 4: amounts safe end to end. The read model keeps any integer amount exactly (past
SQLite's INTEGER range, past 2^64 in a total), refuses an amount that is not an integer with a
clear error (the consumer dead-letters that one event and goes on), upgrades a read model made with
INTEGER columns, and the chain bounds the credit supply to an int64."""

from __future__ import annotations

import json
import sqlite3

import pytest
from chainsim import Harness

from services.billing import ledger
from services.common.events import Event
from services.common.identity import Identity
from services.common.tx import Code
from services.consensus.bank.keeper import MAX_SUPPLY

BIG = 2**70  # past int64: SQLite's INTEGER would overflow on insert, its sum() long before


def event(n: int, type_: str, **data) -> Event:
    return Event(id=f"e-{n}", type=type_, entity="member:x", source="test", data={"height": n, **data})


def fresh() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    ledger.init(conn)
    return conn


def test_amounts_past_int64_are_kept_and_added_up_exactly():
    conn = fresh()
    for n, to in enumerate(("a", "a", "b"), 1):
        ledger.apply(event(n, "CreditsDeposited", member=to, amount=BIG, reference=f"r{n}"), conn)
    ledger.apply(event(4, "JobAuthorized", job="j", inputs=[{"asset": "b.x", "provider": "b"}]), conn)
    ledger.apply(event(5, "EscrowHeld", job="j", consumer="a", amount=BIG + 7), conn)
    assert ledger.escrow(conn) == {"j": BIG + 7}
    ledger.apply(event(6, "JobSettled", job="j", consumer="a", escrow=BIG + 7, charged=BIG, refunded=7,
                       payouts={"b": BIG - 1, "assoc": 1}, charges={"b.x": BIG}), conn)
    assert ledger.balances(conn) == {"a": 2 * BIG - (BIG + 7) + 7, "b": 2 * BIG - 1, "assoc": 1}
    assert ledger.supply(conn) == 3 * BIG and ledger.escrow(conn) == {}
    st = ledger.statement(conn, "a", 0, 1e12)
    assert st["closing_balance"] == BIG and st["totals_by_kind"]["deposit"] == 2 * BIG
    assert ledger.invoice(conn, "a", 0, 1e12)["lines"][0]["charge"] == BIG
    assert ledger.usage(conn, "b", 0, 1e12)["as_provider"] == [{"asset": "b.x", "counterparty": "a", "jobs": 1,
                                                                 "charged": BIG}]
    assert conn.execute("SELECT typeof(amount) FROM ledger LIMIT 1").fetchone() == ("text",)


@pytest.mark.parametrize("bad", [1.5, "100", None, True, [1], {"n": 1}])
def test_an_amount_that_is_not_an_integer_is_refused_clearly_and_nothing_is_written(bad):
    conn = fresh()
    ledger.apply(event(1, "CreditsDeposited", member="a", amount=10, reference="ok"), conn)
    conn.commit()
    with pytest.raises(ValueError, match="an amount must be an integer"):
        ledger.apply(event(2, "CreditsDeposited", member="a", amount=bad, reference="bad"), conn)
    conn.rollback()  # what the idempotent consumer does before it dead-letters the event
    ledger.apply(event(3, "CreditsDeposited", member="a", amount=5, reference="next"), conn)
    assert ledger.balances(conn) == {"a": 15}


def test_a_read_model_made_with_integer_columns_is_upgraded_in_place():
    conn = sqlite3.connect(":memory:")
    conn.executescript(ledger.SCHEMA.replace("amount TEXT", "amount INTEGER").replace("charge TEXT", "charge INTEGER")
                       .replace("price TEXT", "price INTEGER"))
    conn.execute("INSERT INTO ledger VALUES ('e1', 0, 1, 1.0, 'a', 9223372036854775807, 'deposit', NULL, NULL, 'r')")
    conn.execute("INSERT INTO escrow VALUES ('j', 'a', 12)")
    ledger.init(conn)
    ledger.init(conn)  # twice: nothing left to do
    assert {r[1]: r[2] for r in conn.execute("PRAGMA table_info(ledger)")}["amount"] == "TEXT"
    ledger.apply(event(2, "CreditsDeposited", member="a", amount=1, reference="r2"), conn)
    assert ledger.balances(conn) == {"a": 2**63} and ledger.escrow(conn) == {"j": 12}


def test_the_chain_refuses_a_deposit_past_the_int64_supply(tmp_path):
    assoc = Identity.generate("association")
    h = Harness(tmp_path / "c.sqlite", assoc, balances={"association": MAX_SUPPLY - 10})
    h.block()
    assert json.loads(h.state()["bank/supply"]) == MAX_SUPPLY - 10
    [refused] = h.block(h.tx(assoc, "bank.Deposit", {"to": "association", "amount": 11, "reference": "r"}))
    assert refused.code == Code.INVALID_STATE and "credit supply" in refused.log
    [ok] = h.block(h.tx(assoc, "bank.Deposit", {"to": "association", "amount": 10, "reference": "r2"}))
    assert ok.code == Code.OK and json.loads(h.state()["bank/supply"]) == MAX_SUPPLY
