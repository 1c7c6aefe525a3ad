"""The jobs and statements pages' pure parts: what a job page shows of a record, and the statement's
CSV (a cell a spreadsheet would run as a formula is written as text)."""

from __future__ import annotations

import csv
import io

from services.portal.views import RELAYED, SENDER, STATEMENT_COLUMNS, job_view, table_csv


def test_a_job_page_shows_only_the_fields_it_names():
    record = {"id": "j1", "status": "running", "consumer": "bank", "participants": ["bank", "telco"],
              "attestations": {"telco": {"sig": "…"}}, "params": {"dataset": "customers"}}
    shown = job_view(record)
    assert shown["status"] == "running" and shown["result_hash"] is None
    assert "attestations" not in shown and "params" not in shown


def test_the_statement_csv_defuses_formulas():
    entries = [{"height": 7, "time": 1.5, "kind": "charge", "amount": -40, "counterparty": "=HYPERLINK(\"x\")",
                "job": "+j1", "reference": "@SUM(A1)"},
               {"height": 8, "time": 2.0, "kind": "deposit", "amount": 100, "counterparty": None, "job": None,
                "reference": "wire 42, 中文"}]
    rows = list(csv.reader(io.StringIO(table_csv(entries, STATEMENT_COLUMNS))))
    assert rows[0] == ["height", "time", "kind", "amount", "counterparty", "job", "reference"]
    assert rows[1] == ["7", "1.5", "charge", "-40", "'=HYPERLINK(\"x\")", "'+j1", "'@SUM(A1)"]
    assert rows[2] == ["8", "2.0", "deposit", "100", "", "", "wire 42, 中文"]


def test_every_relayed_type_names_the_role_that_may_send_it():
    assert set(SENDER) == set(RELAYED)
    kill_switches = ("members.Suspend", "members.Reinstate", "jobs.Abort", "assets.Suspend")
    assert {SENDER[t] for t in kill_switches} == {("association_admin",)}
    assert SENDER["members.Register"] == ("association_admin",)
    assert SENDER["access.Approve"] == ("member_admin", "association_admin")  # the provider's, or the association's (L4)
