"""Datasets from CSV, Parquet and SQLite, and their commitments (the Merkle root)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.compute import commitment as c
from services.compute.datasets import Dataset, DatasetConfig, DatasetError, Datasets, main

ROWS = [("+86-100", "north", 3), ("+86-101", "south", 12), ("+86-102", "", 0)]


def _files(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("phone,district,tenure\n" + "".join(f"{p},{d},{t}\n" for p, d, t in ROWS))
    pq.write_table(pa.table({"phone": [r[0] for r in ROWS], "district": [r[1] for r in ROWS],
                             "tenure": [r[2] for r in ROWS]}), tmp_path / "t.parquet")
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("CREATE TABLE subs (phone TEXT, district TEXT, tenure INTEGER)")
    db.executemany("INSERT INTO subs VALUES (?, ?, ?)", list(reversed(ROWS)))  # another order
    db.commit()
    db.close()
    (tmp_path / "ds.json").write_text(json.dumps({"datasets": [
        {"id": "csv", "format": "csv", "path": "t.csv", "key": "phone"},
        {"id": "pq", "asset": "telco.subs", "format": "parquet", "path": "t.parquet"},
        {"id": "db", "format": "sqlite", "path": "t.db", "table": "subs"}]}))
    return Datasets.from_path(tmp_path / "ds.json")


def test_the_same_table_has_the_same_commitment_from_csv_parquet_and_sqlite(tmp_path):
    reg = _files(tmp_path)
    roots = {d.id: d.summary() for d in reg.all()}
    assert len({r for r, _ in roots.values()}) == 1
    assert all(n == 3 for _, n in roots.values())
    assert reg.for_asset("telco.subs").id == "pq" and reg.get("csv").config.key == "phone"


def test_the_root_follows_the_documented_rules():
    rows = [c.canonical_row(["b", "a"], [1, "x"]), c.canonical_row(["b", "a"], [None, "é"])]
    assert rows == [b'{"a":"x","b":"1"}', '{"a":"é","b":null}'.encode()]
    leaves = sorted(hashlib.sha256(b"\x00" + r).digest() for r in rows)
    assert c.commitment_of(["b", "a"], [(1, "x"), (None, "é")]) == hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).hexdigest()
    three = [c.leaf(b"1"), c.leaf(b"2"), c.leaf(b"3")]
    s = sorted(three)
    assert c.merkle_root(three) == hashlib.sha256(b"\x01" + hashlib.sha256(b"\x01" + s[0] + s[1]).digest() + s[2]).hexdigest()
    assert c.merkle_root([]) == hashlib.sha256(b"").hexdigest()


def test_values_are_canonicalised_by_type():
    assert [c.canonical_value(v) for v in (None, True, 7, 1.5, b"\x01\xff", dt.date(2025, 1, 2), "s")] == \
        [None, "true", "7", "1.5", "01ff", "2025-01-02", "s"]


def test_any_change_changes_the_commitment_and_row_order_does_not():
    base = c.commitment_of(["k"], [("a",), ("b",), ("c",)])
    assert c.commitment_of(["k"], [("c",), ("a",), ("b",)]) == base
    assert c.commitment_of(["k"], [("a",), ("b",), ("d",)]) != base
    assert c.commitment_of(["k"], [("a",), ("b",), ("c",), ("c",)]) != base  # a duplicate row counts
    assert c.commitment_of(["j"], [("a",), ("b",), ("c",)]) != base  # so do column names


def test_load_returns_requested_columns_and_the_commitment_in_one_pass(tmp_path):
    reg = _files(tmp_path)
    loaded = reg.get("db").load(["phone"])
    assert sorted(loaded.columns["phone"]) == [r[0] for r in ROWS] and loaded.rows == 3
    assert loaded.commitment == reg.get("csv").summary()[0]
    with pytest.raises(DatasetError, match="no column nope"):
        reg.get("csv").load(["nope"])


def test_bad_configurations_and_files_are_named_without_values(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,SECRET-VALUE,3\n")
    d = Dataset(DatasetConfig(id="bad", format="csv", path=bad))
    with pytest.raises(DatasetError) as err:
        d.load(["a"])
    assert "SECRET" not in str(err.value) and "line 2" in str(err.value)
    with pytest.raises(DatasetError, match="needs a table"):
        Dataset(DatasetConfig(id="x", format="sqlite", path=bad))
    with pytest.raises(Exception):
        DatasetConfig(id="x", format="sqlite", path=bad, table='subs"; DROP TABLE x; --')
    (tmp_path / "dup.json").write_text(json.dumps([{"id": "a", "format": "csv", "path": "bad.csv"},
                                                   {"id": "a", "format": "csv", "path": "bad.csv"}]))
    with pytest.raises(DatasetError, match="twice"):
        Datasets.from_path(tmp_path / "dup.json")
    with pytest.raises(DatasetError, match="does not exist"):
        Datasets.from_path(tmp_path / "missing.json")


def test_a_directory_of_configs_and_the_cli(tmp_path, capsys):
    _files(tmp_path)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "one.json").write_text(json.dumps({"id": "one", "format": "csv", "path": str(tmp_path / "t.csv")}))
    (conf / "two.json").write_text(json.dumps([{"id": "two", "format": "sqlite", "path": str(tmp_path / "t.db"),
                                                "table": "subs"}]))
    assert sorted(d.id for d in Datasets.from_path(conf).all()) == ["one", "two"]
    assert main([str(conf)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["commitment"] for line in lines} == {Datasets.from_path(conf).get("one").summary()[0]}


def test_the_summary_is_recomputed_only_when_the_file_changes(tmp_path):
    reg = _files(tmp_path)
    d = reg.get("csv")
    first = d.summary()
    assert d.cached_summary() == first
    with open(tmp_path / "t.csv", "a") as f:
        f.write("+86-103,east,1\n")
    assert d.cached_summary() is None
    assert d.summary() != first and d.summary()[1] == 4
