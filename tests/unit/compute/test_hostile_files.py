"""Hostile and careless files on a compute node: dataset sources, imported copies, the node key,
the journal. Each gets a clear error (or, where it is valid, the documented value), never a hang,
unbounded memory or a crash that stops the node, and no cell value in an error or a log."""

from __future__ import annotations

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.compute import commitment as c
from services.compute.datasets import Dataset, DatasetConfig, DatasetError
from tests.filekit import within as _within

CANARY = "CANARY-7f3a9"


def _csv(tmp_path, data: bytes | str, name="t.csv", copies=True) -> Dataset:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return Dataset(DatasetConfig(id="d", format="csv", path=path), tmp_path / "copies" if copies else None)


def _refused(dataset: Dataset, caplog, columns=("phone",), match: str | None = None) -> str:
    """The load is refused with a DatasetError that (like the log) holds no cell value."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatasetError) as err:
        dataset.load(list(columns))
    text = str(err.value)
    assert CANARY not in text and CANARY not in caplog.text
    if match:
        assert match in text, text
    return text


# -- dataset sources: bytes that are not a good CSV ---------------------------------------------------
def test_invalid_utf8_is_refused_by_line_without_its_bytes(tmp_path, caplog):
    d = _csv(tmp_path, b"phone,x\n1,a\n2," + CANARY.encode() + b"\xff\xfe\n")
    _refused(d, caplog, match="UTF-8")


def test_a_ragged_row_is_refused_by_line_without_its_values(tmp_path, caplog):
    d = _csv(tmp_path, f"phone,x\n1,a\n2,{CANARY},extra\n")
    _refused(d, caplog, match="line 3")


def test_an_empty_file_has_no_header_row(tmp_path, caplog):
    _refused(_csv(tmp_path, b""), caplog, match="no header row")


def test_a_header_only_file_is_an_empty_dataset_with_its_columns(tmp_path):
    d = _csv(tmp_path, "phone,x\n")
    loaded = d.load(["phone"])
    assert (loaded.rows, loaded.commitment, loaded.columns) == (0, c.EMPTY_ROOT, {"phone": []})
    assert d.columns() == ["phone", "x"]


def test_a_missing_key_column_is_named(tmp_path, caplog):
    _refused(_csv(tmp_path, f"id,x\n1,{CANARY}\n"), caplog, match="no column phone")


def test_duplicate_header_names_are_refused(tmp_path, caplog):
    _refused(_csv(tmp_path, f"phone,phone\n1,{CANARY}\n"), caplog, match="repeats a column name")


def test_a_parquet_file_with_duplicate_column_names_is_refused(tmp_path, caplog):
    # the commitment's row object keeps one value per name, so the other column's values would be
    # used by a job but committed by nothing
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["1"]), pa.array([CANARY])], names=["phone", "phone"]), path)
    d = Dataset(DatasetConfig(id="d", format="parquet", path=path), tmp_path / "copies")
    _refused(d, caplog, match="repeats a column name")


@pytest.mark.parametrize("variant", ["bom", "crlf", "bare-cr", "quoted-newline", "nul", "formula"])
def test_text_variants_keep_their_values_verbatim(tmp_path, variant):
    """A BOM is not part of the first column's name; CRLF and LF records give the same rows and so
    the same commitment; a quoted newline, a NUL and a formula-looking cell are values like any other
    (kept byte for byte: the node never exports rows, so there is nothing to neutralise)."""
    lf = "phone,x\n1,a\n2,b\n"
    data, values = {
        "bom": ("\ufeff" + lf, ["a", "b"]),
        "crlf": (lf.replace("\n", "\r\n"), ["a", "b"]),
        "bare-cr": (lf.replace("\n", "\r"), ["a", "b"]),
        "quoted-newline": ('phone,x\n1,"a\nb"\n2,b\n', ["a\nb", "b"]),
        "nul": ("phone,x\n1,a\x00b\n2,b\n", ["a\x00b", "b"]),
        "formula": ('phone,x\n1,"=HYPERLINK(""http://x"",""y"")"\n2,@SUM(A1)\n', ['=HYPERLINK("http://x","y")', "@SUM(A1)"]),
    }[variant]
    d = _csv(tmp_path, data)
    loaded = d.load(["phone", "x"])
    assert loaded.columns == {"phone": ["1", "2"], "x": values}
    assert loaded.commitment == c.commitment_of(["phone", "x"], [("1", values[0]), ("2", values[1])])
    again = Dataset(d.config, tmp_path / "copies").load(["x"])  # from the imported copy
    assert (again.columns["x"], again.commitment) == (values, loaded.commitment)


# -- dataset sources: not a regular file, or one with no end ------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_a_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, caplog, kind):
    path = tmp_path / "t.csv"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")  # endless NULs: one line with no end
    for fmt in ("csv", "parquet", "sqlite"):
        d = Dataset(DatasetConfig(id="d", format=fmt, path=path, table="t"), tmp_path / "copies")
        with pytest.raises(DatasetError, match="not a regular file"):
            _within(10, lambda: d.load(["phone"]))
        with pytest.raises(DatasetError, match="not a regular file"):
            _within(10, d.columns)  # what GET /datasets asks, on the event loop


def test_a_symlink_out_of_its_directory_is_refused_inside_is_followed(tmp_path, caplog):
    """A dataset file replaced by a link to, say, the node key: its first line would become the
    dataset's column names, which GET /datasets shows."""
    secret = tmp_path / "state" / "node.key"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"account": "m.node", "secret_key": CANARY}))
    data = tmp_path / "data"
    (data / "2026").mkdir(parents=True)
    (data / "t.csv").symlink_to(secret)
    d = Dataset(DatasetConfig(id="d", format="csv", path=data / "t.csv"), tmp_path / "copies")
    caplog.set_level(logging.DEBUG)
    for call in (lambda: d.load(["phone"]), d.columns):
        with pytest.raises(DatasetError, match="outside its directory") as err:
            call()
        assert CANARY not in str(err.value) and CANARY not in caplog.text
    (data / "2026" / "t.csv").write_text("phone\n1\n")
    (data / "t.csv").unlink()
    (data / "t.csv").symlink_to(data / "2026" / "t.csv")  # within its directory: a link is fine
    assert d.load(["phone"]).columns == {"phone": ["1"]}


@pytest.mark.parametrize("shape", ["100MB field", "sparse 3GB file", "a million columns"])
def test_an_oversized_record_is_refused_without_reading_it_whole(tmp_path, caplog, shape):
    import tracemalloc
    path = tmp_path / "t.csv"
    with open(path, "wb") as f:
        if shape == "100MB field":
            f.write(b"phone,x\n1,")
            f.write(CANARY.encode() * (100_000_000 // len(CANARY)))
            f.write(b"\n")
        elif shape == "sparse 3GB file":
            f.truncate(3 << 30)  # NULs, no newline
        else:
            f.write(b"phone," + b",".join(b"c%d" % i for i in range(1_000_000)) + b"\n")
    d = Dataset(DatasetConfig(id="d", format="csv", path=path), tmp_path / "copies")
    tracemalloc.start()  # the peak of this load alone, whatever ran before it
    try:
        _refused(d, caplog, match="more than 10000" if shape == "a million columns" else "larger than")
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    path.unlink()  # pytest keeps its last runs' directories: not 100 MB of them
    assert peak_mb < 100, f"{peak_mb:.0f} MB at the peak"  # was 191 MB for the 100 MB field, GBs for the sparse file



# -- the imported copy and its metadata ---------------------------------------------------------------
def _two_copies(tmp_path):
    """Two datasets of the same shape (rows, sizes) imported into one copies directory."""
    out = []
    for name, value in (("a", "+86-100"), ("b", "+86-999")):
        path = tmp_path / f"{name}.csv"
        path.write_text(f"phone,x\n{value},1\n+86-101,2\n")
        d = Dataset(DatasetConfig(id=name, format="csv", path=path), tmp_path / "copies")
        out.append((d, d.load(["phone"])))
    return out


@pytest.mark.parametrize("damage", ["a value's bytes", "the root", "the row count", "swapped copies", "deleted copy",
                                    "deleted metadata"])
def test_a_copy_that_no_longer_matches_is_imported_again_never_used(tmp_path, damage):
    (a, first), (b, _) = _two_copies(tmp_path)
    copies = tmp_path / "copies"
    arrow, meta = copies / "a.arrow", copies / "a.json"
    if damage == "a value's bytes":  # same size: an edit the size check cannot see
        arrow.write_bytes(arrow.read_bytes().replace(b"+86-100", b"+86-555"))
    elif damage == "the root":
        m = json.loads(meta.read_bytes())
        meta.write_text(json.dumps({**m, "commitment": "ab" * 32}))
    elif damage == "the row count":
        m = json.loads(meta.read_bytes())
        meta.write_text(json.dumps({**m, "rows": m["rows"] + 1}))
    elif damage == "swapped copies":  # same size, same row count, other rows
        other = copies / "b.arrow"
        assert other.stat().st_size == arrow.stat().st_size
        data = arrow.read_bytes()
        arrow.write_bytes(other.read_bytes())
        other.write_bytes(data)
    elif damage == "deleted copy":
        arrow.unlink()
    else:
        meta.unlink()
    again = Dataset(a.config, copies)
    scans = []
    scan = again.scan
    again.scan = lambda *a_, **k: (scans.append(1), (yield from scan(*a_, **k)))[1]
    loaded = again.load(["phone"])
    assert scans, "served from the damaged copy"
    assert (loaded.columns, loaded.commitment, loaded.rows) == (first.columns, first.commitment, first.rows)
    fresh = Dataset(a.config, copies)  # and the import made a good copy again
    fresh.scan = lambda *a_, **k: pytest.fail("the source was read again")
    assert fresh.load(["phone"]).columns == first.columns


def test_numbers_edited_in_place_are_not_used(tmp_path):
    from services.compute.datasets import ARROW_COLUMNS

    d = _csv(tmp_path, "phone,amount\n1,2.5\n2,7.25\n")
    d.load([])
    numbers = tmp_path / "copies" / "d.arrow.numbers"
    numbers.write_bytes(numbers.read_bytes().replace(pa.array([2.5]).buffers()[1].to_pybytes(),
                                                     pa.array([9.5]).buffers()[1].to_pybytes()))
    token = ARROW_COLUMNS.set(True)
    try:
        loaded = Dataset(d.config, tmp_path / "copies").load(["amount"])
    finally:
        ARROW_COLUMNS.reset(token)
    assert loaded.numbers == {} and loaded.columns["amount"].to_pylist() == ["2.5", "7.25"]


# -- the journal ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["spec", "progress", "timings"])
def test_a_journal_row_with_damaged_json_is_read_not_fatal(tmp_path, caplog, field):
    """A row whose JSON was damaged on disk (a bad restore, a hand edit): every reader of the journal
    (recovery at start, each chain event, GET /jobs) would raise on it and stop the node's loop. It
    reads as empty instead, logged by job and field; the job runs on the chain's spec as always."""
    import sqlite3

    from services.compute.journal import Journal

    j = Journal(sqlite3.connect(tmp_path / "node.sqlite", isolation_level=None))
    j.add("job-1", "psi", "consumer", {"job": "job-1", "participants": ["c", "p"], "inputs": []}, 2**40, 1)
    j.add("job-2", "psi", "consumer", {"job": "job-2", "participants": ["c", "p"], "inputs": []}, 2**40, 1)
    j.conn.execute(f"UPDATE jobs SET {field} = ? WHERE job = 'job-1'", ('{"' + CANARY + '": [' + "x" * 1000,))
    caplog.set_level(logging.DEBUG)
    rows = {r.job: r for r in j.active()}
    assert set(rows) == {"job-1", "job-2"} and rows["job-2"].spec["participants"] == ["c", "p"]
    assert rows["job-1"].public()["job"] == "job-1" and j.get("job-1").status == "pending"
    assert "job-1" in caplog.text and field in caplog.text and CANARY not in caplog.text


# -- the node key file -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "not JSON", "no secret", "short secret", "a list", "another node's key"])
def test_a_bad_node_key_file_stops_the_start_with_a_clear_reason_and_no_key(tmp_path, case):
    import base64

    from services.common.identity import Identity
    from services.compute.app import _node_identity
    from services.compute.settings import ComputeSettings

    path = tmp_path / "node.key"
    secret = base64.b64encode(CANARY.encode().ljust(32, b"x")).decode()
    text = {"missing": None,
            "not JSON": '{"account": "m.node", "secret_key": "' + secret,
            "no secret": json.dumps({"account": "m.node", "secret": secret}),
            "short secret": json.dumps({"account": "m.node", "secret_key": base64.b64encode(CANARY.encode()).decode()}),
            "a list": json.dumps([secret]),
            "another node's key": json.dumps({"account": "other.node", "secret_key": secret})}[case]
    if text is not None:
        path.write_text(text)
    settings = ComputeSettings(member_id="m", node_key_file=path, state_root=tmp_path / "state")
    with pytest.raises(SystemExit) as err:
        _node_identity(settings)
    message = str(err.value.code)
    assert message.startswith("RDX_NODE_KEY_FILE: ") and secret not in message and CANARY not in message
    assert err.value.__context__ is None or err.value.__suppress_context__  # no chained json/nacl message
    if case == "another node's key":
        assert "other.node, not of m.node" in message
    good = Identity.generate("m.node")
    good.save(path)
    assert _node_identity(settings).public_key == good.public_key


def test_a_world_readable_node_key_is_warned_about(tmp_path, caplog):
    from services.common.identity import Identity
    from services.compute.app import _node_identity
    from services.compute.settings import ComputeSettings

    path = tmp_path / "node.key"
    Identity.generate("m.node").save(path)
    settings = ComputeSettings(member_id="m", node_key_file=path, state_root=tmp_path / "state")
    caplog.set_level(logging.WARNING)
    _node_identity(settings)
    assert "readable by every user" not in caplog.text
    path.chmod(0o644)
    _node_identity(settings)
    assert "readable by every user" in caplog.text and "644" in caplog.text


@pytest.mark.parametrize("damage", ["truncated", "a CSV named .parquet", "zeroed footer"])
def test_a_corrupt_parquet_file_is_refused_without_its_values(tmp_path, caplog, damage):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"phone": [CANARY + str(i) for i in range(100)]}), path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "a CSV named .parquet":
        path.write_text(f"phone\n{CANARY}\n")
    else:
        path.write_bytes(data[:-12] + b"\0" * 8 + data[-4:])  # footer length and magic kept, the length zeroed
    d = Dataset(DatasetConfig(id="d", format="parquet", path=path), tmp_path / "copies")
    _refused(d, caplog, match="parquet could not be read")


def test_get_datasets_reads_each_header_off_the_event_loop(tmp_path):
    """GET /datasets reads every dataset's header: on the event loop, a slow or large one would
    stall every request and chain event of the node."""
    import asyncio
    import sqlite3

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from services.compute import api
    from services.compute.datasets import Datasets
    from services.compute.journal import Journal

    d = _csv(tmp_path, "phone,x\n1,a\n")
    on_loop = []
    columns = d.columns

    def spy():
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return columns()
    d.columns = spy
    app = FastAPI()
    app.include_router(api.router(member="m", node_account="m.node", public_key="", peer_endpoint="", runner="local",
                                  workers=1, datasets=Datasets([d]), journal=Journal(sqlite3.connect(":memory:")),
                                  registered=lambda: True))
    listed = TestClient(app).get("/datasets").json()
    assert listed[0]["columns"] == ["phone", "x"] and on_loop == [False]


def test_a_relative_path_in_datasets_json_is_checked_as_written_not_as_resolved(tmp_path, caplog):
    """Resolving the configured path when the config is read would hand the check the link's target."""
    from services.compute.datasets import Datasets

    secret = tmp_path / "state" / "node.key"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"account": "m.node", "secret_key": CANARY}))
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.csv").symlink_to(secret)
    (data / "ds.json").write_text(json.dumps({"id": "d", "format": "csv", "path": "t.csv"}))
    d = Datasets.from_path(data / "ds.json").get("d")
    assert d.config.path == data.resolve() / "t.csv"
    _refused(d, caplog, match="outside its directory")


def test_the_record_bound_counts_each_record_on_its_own(tmp_path):
    """A header and a row each under MAX_RECORD_CHARS (together over it) are read."""
    from services.compute.datasets import MAX_RECORD_CHARS

    width = 100
    cell = "x" * (MAX_RECORD_CHARS * 6 // 10 // width)  # a record of 60% of the bound, each field under csv's limit
    header = ",".join(f"c{i}{cell}" for i in range(width))
    d = _csv(tmp_path, header + "\n" + ",".join([cell] * width) + "\n", copies=False)
    assert d.load([]).rows == 1
