"""Datasets from CSV, Parquet and SQLite, and their commitments (the Merkle root)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
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


# -- the node's imported copies ---------------------------------------------------------------------
def _no_scan(dataset):
    def refuse(*_a, **_k):
        raise AssertionError("the source was read again")
    dataset.scan = refuse


def _copied(tmp_path, fmt="csv", text=None):
    path = tmp_path / ("t.csv" if fmt == "csv" else "t.parquet")
    if fmt == "csv":
        path.write_text(text or "phone,district\n+86-100,north\n+86-101,\"south, east\"\n+86-102,\n")
    else:
        pq.write_table(pa.table({"phone": ["+86-100", "+86-101"], "tenure": [3, None]}), path)
    return Dataset(DatasetConfig(id="d", format=fmt, path=path), tmp_path / "copies"), path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_dataset_is_imported_once_and_later_loads_read_the_copy(tmp_path, fmt):
    d, _ = _copied(tmp_path, fmt)
    first = d.load(["phone"])
    assert (tmp_path / "copies").stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in (tmp_path / "copies").iterdir())
    again = Dataset(d.config, tmp_path / "copies")  # a restarted node
    _no_scan(again)
    second = again.load(["phone"])
    assert (second.commitment, second.rows, second.columns) == (first.commitment, first.rows, first.columns)
    assert again.summary() == (first.commitment, first.rows)
    with pytest.raises(DatasetError, match="no column nope"):
        again.load(["nope"])


def test_the_copy_gives_exactly_the_values_the_csv_reader_gives(tmp_path):
    import random
    rng = random.Random(7)
    alphabet = "ab,\"' \t中文é\\x"
    rows = [[("".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))) for _ in range(3)] for _ in range(500)]
    import csv as csvmod
    import io
    buf = io.StringIO()
    csvmod.writer(buf).writerows([["k", "v", "w"], *rows])
    d, path = _copied(tmp_path, text=buf.getvalue())
    plain = Dataset(d.config).load(["k", "v", "w"])  # no copies: the source itself
    d.load([])
    _no_scan(d)
    copy = d.load(["k", "v", "w"])
    assert copy.columns == plain.columns and copy.commitment == plain.commitment


@pytest.mark.parametrize("arrow", [False, True], ids=["lists", "arrow-columns"])
def test_a_source_changed_on_disk_is_imported_again_never_served_from_the_old_copy(tmp_path, arrow):
    from services.compute.datasets import ARROW_COLUMNS

    d, path = _copied(tmp_path)
    before = d.load(["phone"])
    st = path.stat()
    path.write_text(path.read_text().replace("+86-100", "+86-999"))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    token = ARROW_COLUMNS.set(arrow)  # a caller asking for arrow columns gets no stale copy either
    try:
        after = Dataset(d.config, tmp_path / "copies").load(["phone"])
    finally:
        ARROW_COLUMNS.reset(token)
    values = after.columns["phone"]
    assert "+86-999" in (values if isinstance(values, list) else values.to_pylist())
    assert after.commitment != before.commitment  # which the listing's commitment then refuses


@pytest.mark.parametrize("damage", ["arrow", "meta", "meta-lies"])
def test_a_damaged_copy_is_not_trusted(tmp_path, damage):
    d, _ = _copied(tmp_path)
    first = d.load(["phone"])
    arrow, meta = tmp_path / "copies" / "d.arrow", tmp_path / "copies" / "d.json"
    if damage == "arrow":
        arrow.write_bytes(b"\x00" * arrow.stat().st_size)
    elif damage == "meta":
        meta.write_bytes(b"{not json")
    else:  # a copy that claims another commitment for another source
        m = json.loads(meta.read_bytes())
        meta.write_text(json.dumps({**m, "source": "/etc/passwd", "commitment": "00" * 32}))
    again = Dataset(d.config, tmp_path / "copies").load(["phone"])
    assert (again.commitment, again.columns) == (first.commitment, first.columns)


def test_a_file_changed_while_imported_keeps_no_copy(tmp_path):
    d, path = _copied(tmp_path)
    scan = d.scan

    def scan_and_write(*a, **k):
        for item in scan(*a, **k):
            yield item
            path.write_text(path.read_text() + "+86-103,west\n")
    d.scan = scan_and_write
    d.load(["phone"])
    assert [f.name for f in (tmp_path / "copies").iterdir()] == []  # no copy, no temp file


def test_concurrent_loads_import_once_and_a_crashed_import_leaves_nothing_behind(tmp_path):
    import threading
    d, _ = _copied(tmp_path)
    (tmp_path / "copies").mkdir()
    (tmp_path / "copies" / ".d.arrow.dead.tmp").write_bytes(b"half an import")
    scans = []
    scan = d.scan
    d.scan = lambda *a, **k: (scans.append(1), (yield from scan(*a, **k)))[1]
    results = []
    threads = [threading.Thread(target=lambda: results.append(d.load(["phone"]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(scans) == 1 and len({(r.commitment, tuple(r.columns["phone"])) for r in results}) == 1
    assert sorted(f.name for f in (tmp_path / "copies").iterdir()) == ["d.arrow", "d.json"]


def test_copies_that_cannot_be_written_cost_speed_not_the_job(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    d, _ = _copied(tmp_path)
    plain = Dataset(d.config).load(["phone"])
    stuck = Dataset(d.config, blocker / "copies")  # its parent is a file: nothing can be made there
    assert (stuck.load(["phone"]).columns, stuck.load(["phone"]).commitment) == (plain.columns, plain.commitment)


def test_a_node_keeps_its_copies_beside_the_data_not_in_its_state(tmp_path, monkeypatch):
    from services.compute.settings import ComputeSettings
    (tmp_path / "ds.json").write_text("{}")
    monkeypatch.setenv("RDX_DATASETS", str(tmp_path / "ds.json"))
    monkeypatch.setenv("RDX_STATE_ROOT", str(tmp_path / "state"))
    settings = ComputeSettings()
    assert settings.copies_dir == tmp_path / ".rdx-copies"
    assert tmp_path / "state" not in settings.copies_dir.parents
    monkeypatch.setenv("RDX_DATASET_COPIES", str(tmp_path / "elsewhere"))
    assert ComputeSettings().copies_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize("exposure", ["world-writable copy", "group-writable directory", "symlinked copy"])
def test_a_copy_others_could_have_written_is_not_used(tmp_path, exposure):
    d, _ = _copied(tmp_path)
    first = d.load(["phone"])
    copies, arrow = tmp_path / "copies", tmp_path / "copies" / "d.arrow"
    forged = tmp_path / "forged.arrow"
    if exposure == "world-writable copy":
        arrow.chmod(0o666)
    elif exposure == "group-writable directory":
        copies.chmod(0o770)
    else:
        forged.write_bytes(arrow.read_bytes())
        arrow.unlink()
        arrow.symlink_to(forged)
    again = Dataset(d.config, copies)
    scans = []
    scan = again.scan
    again.scan = lambda *a, **k: (scans.append(1), (yield from scan(*a, **k)))[1]
    loaded = again.load(["phone"])
    assert scans and (loaded.columns, loaded.commitment) == (first.columns, first.commitment)  # read from the source


# -- columns as pyarrow arrays (datasets.ARROW_COLUMNS, JobContext.load_input(..., arrow=True)) ------
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_caller_that_asks_gets_the_copys_columns_as_arrow_arrays_with_the_same_values(tmp_path, fmt):
    from services.compute.datasets import ARROW_COLUMNS

    d, _ = _copied(tmp_path, fmt)
    cols = ["phone", "district"] if fmt == "csv" else ["phone", "tenure"]
    first = d.load(cols)  # the import: lists, from the source
    token = ARROW_COLUMNS.set(True)
    try:
        _no_scan(d)
        arrow = d.load(cols)
    finally:
        ARROW_COLUMNS.reset(token)
    assert all(isinstance(v, pa.ChunkedArray) for v in arrow.columns.values())
    assert {k: v.to_pylist() for k, v in arrow.columns.items()} == first.columns
    assert (arrow.commitment, arrow.rows) == (first.commitment, first.rows)
    assert isinstance(d.load(cols).columns[cols[0]], list)  # not asked: lists, as before


def test_job_context_load_input_asks_for_arrow_on_the_thread_that_loads_and_only_for_that_call():
    import asyncio

    from services.compute.datasets import ARROW_COLUMNS, Loaded
    from services.compute.jobtypes.base import InputRef, JobContext, JobSpec

    seen = []

    async def load(ref, columns):  # as the lifecycle does it: Dataset.load on a thread
        return await asyncio.to_thread(lambda: seen.append(ARROW_COLUMNS.get()) or Loaded("d", "c", 0))

    spec = JobSpec("j", "aggregation", "c", (), ("c",), {}, {}, 0, 0)
    ctx = JobContext(spec, "c", channel=None, load_input=load, load_local=lambda i, c: load(None, c),
                     dataset_key=lambda _: None, commit_result=None, progress=None, compute=None)
    ref = InputRef("a", "p", 1, "c")

    async def go():
        await ctx.load_input(ref, ["x"], arrow=True)
        await ctx.load_input(ref, ["x"])
        await ctx.load_local("d", ["x"], arrow=True)
        return ARROW_COLUMNS.get()

    assert asyncio.run(go()) is False
    assert seen == [True, False, True]


def _numbers_of(d, columns):
    from services.compute.datasets import ARROW_COLUMNS

    token = ARROW_COLUMNS.set(True)
    try:
        return d.load(columns)
    finally:
        ARROW_COLUMNS.reset(token)


NUMERIC_CSV = "id,amount,note\n1,2.5,x\n2,-1e3,\n3,0.1,7\n"


def test_a_csv_copy_keeps_its_all_numeric_columns_cast_once_for_callers_that_ask(tmp_path):
    from services.compute.jobtypes.aggregation import numeric

    d, _ = _copied(tmp_path, text=NUMERIC_CSV)
    d.load([])  # the import
    _no_scan(d)
    loaded = _numbers_of(d, ["amount", "note", "id"])
    assert set(loaded.numbers) == {"amount", "id"}  # "note" has a blank and a letter: not every value a number
    for c in ("amount", "id"):
        assert loaded.numbers[c].to_numpy().tolist() == numeric(loaded.columns[c].to_pylist(), c).tolist()
    assert loaded.columns["amount"].to_pylist() == ["2.5", "-1e3", "0.1"]  # the text is unchanged
    assert d.load(["amount"]).numbers == {}  # not asked: nothing more than before


@pytest.mark.parametrize("damage", ["size", "exposed", "missing"])
def test_numbers_that_do_not_check_out_are_ignored_the_text_still_serves(tmp_path, damage):
    d, _ = _copied(tmp_path, text=NUMERIC_CSV)
    first = d.load(["amount"])
    numbers = tmp_path / "copies" / "d.arrow.numbers"
    if damage == "size":
        numbers.write_bytes(numbers.read_bytes() + b"\0")
    elif damage == "exposed":
        numbers.chmod(0o644)
    else:
        numbers.unlink()
    _no_scan(d)
    loaded = _numbers_of(d, ["amount"])
    assert loaded.numbers == {}
    assert (loaded.commitment, loaded.columns["amount"].to_pylist()) == (first.commitment, first.columns["amount"])


def test_a_source_changed_on_disk_gets_new_numbers_with_its_new_import(tmp_path):
    d, path = _copied(tmp_path, text=NUMERIC_CSV)
    d.load([])
    st = path.stat()
    path.write_text(NUMERIC_CSV.replace("2.5", "9.5"))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    loaded = _numbers_of(Dataset(d.config, tmp_path / "copies"), ["amount"])  # imports again, from the source
    assert loaded.columns["amount"][0] == "9.5"
    again = _numbers_of(Dataset(d.config, tmp_path / "copies"), ["amount"])  # from the new copy
    assert again.numbers["amount"].to_pylist() == [9.5, -1000.0, 0.1]
