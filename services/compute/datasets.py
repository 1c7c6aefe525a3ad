"""A member's local datasets: registered from CSV, Parquet or a SQLite table, never exported raw.

``RDX_DATASETS`` names a JSON file, or a directory of JSON files, describing them::

    {"datasets": [
      {"id": "subscribers", "asset": "telco.subscribers", "format": "parquet",
       "path": "subscribers.parquet", "key": "phone"},
      {"id": "customers", "format": "csv", "path": "/data/customers.csv", "key": "phone"},
      {"id": "blacklist", "format": "sqlite", "path": "risk.db", "table": "blacklist", "key": "id_no"}
    ]}

``asset`` binds a dataset to the listing it backs (a job names assets, the node finds the
data); a dataset without one is the member's own input to jobs it consumes (named in the job's
params). ``key`` is the column a PSI matches on unless the job says otherwise. Relative paths
are relative to the JSON file. Nothing here hands rows to anything but a job running on this
node: the HTTP API shows a dataset's id, asset, columns, row count and commitment only.

A node keeps an imported copy of each CSV dataset (``copies``: a directory beside the data, not
in the node's state, which holds no raw data; 0700, files 0600): an Arrow IPC file written
in the one pass that computes the commitment, with the commitment and the source file's
identity (size, mtime, ctime, inode) beside it. A job then memory-maps the copy and reads only
its columns instead of parsing the CSV and re-hashing every row. The copy is used only while
the source file is unchanged; any write to it (even one that restores size and mtime changes
ctime) re-imports, so the job runs on the changed data under its new commitment, which the
listing's then refuses. Beside a CSV copy the import keeps its numbers (``<id>.arrow.numbers``,
0600, its size in the metadata): every column whose every value Arrow's text-to-float64 cast
parses, cast once, which a job that sums columns reads instead of parsing the text again
(``Loaded.numbers``, for a caller that asks: ARROW_COLUMNS). Parquet is columnar already: its commitment is kept the same way and
a job reads its columns straight from the file (checked unchanged before and after). SQLite
tables are hashed on every load (a column may mix types, which Arrow cannot hold).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.files import FileRefused, open_regular, read_regular, reason
from services.compute.commitment import MerkleBuilder

log = logging.getLogger("rdx.compute.datasets")

BATCH_ROWS = 65_536
# Set by a caller that takes a column as a pyarrow array (JobContext.load_input(..., arrow=True)): read
# from the imported copy or from Parquet, the requested columns are then handed over as pyarrow arrays
# instead of Python lists (a job that turns a column into numbers does so in one vectorised cast, not
# per value). A ContextVar, because the node calls ``load`` on a thread (asyncio.to_thread copies the
# caller's context into it); a caller that did not ask, or a load from the source, gets lists as before.
ARROW_COLUMNS: ContextVar[bool] = ContextVar("rdx_dataset_arrow_columns", default=False)
# Bounds on what one CSV record may make the reader hold (a field is bounded by the csv module's own
# limit, 131072 characters): a header or row past them is refused, never read whole into memory.
MAX_RECORD_CHARS = 16 << 20
MAX_COLUMNS = 10_000
MAX_DESCRIPTION_BYTES = 1 << 20  # one JSON file of RDX_DATASETS
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class DatasetError(Exception):
    """A dataset that cannot be read or used. Messages name files, columns and row numbers, never values."""


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,79}$")
    format: Literal["csv", "parquet", "sqlite"]
    path: Path
    asset: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.\-]*$", max_length=80)
    table: str | None = Field(None, pattern=_IDENT.pattern, description="sqlite: the table to read")
    key: str | None = Field(None, description="the column PSI matches on by default")
    delimiter: str = Field(",", min_length=1, max_length=1, description="csv only")
    description: str = ""


@dataclass
class Loaded:
    """What a job gets from a dataset: the requested columns' values and the commitment of all rows.
    A column is a list, or a pyarrow array when the caller set ARROW_COLUMNS and it came from the
    imported copy or from Parquet (the same values: ``to_pylist()`` gives the list)."""

    dataset: str
    commitment: str
    rows: int
    columns: dict[str, list[Any]] = field(default_factory=dict)
    # With ARROW_COLUMNS, from a CSV dataset's copy: each requested column whose every value Arrow's
    # text-to-float64 cast parsed when the copy was made, as that cast's result (a pyarrow array).
    numbers: dict[str, Any] = field(default_factory=dict)


class Dataset:
    def __init__(self, config: DatasetConfig, copies: Path | None = None):
        if config.format == "sqlite" and not config.table:
            raise DatasetError(f"dataset {config.id}: a sqlite dataset needs a table")
        self.config = config
        self._copies = copies if config.format != "sqlite" else None
        self._cached: tuple[tuple, str, int] | None = None  # (fingerprint, commitment, rows)
        self._lock = threading.Lock()  # one import at a time: a job waits for the node's, not repeats it

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def asset(self) -> str | None:
        return self.config.asset

    # -- reading ----------------------------------------------------------------------------------
    def scan(self, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[list[str], list[Sequence[Any]]]]:
        """(column names, a batch of rows) until the dataset is exhausted; the first batch is empty
        (so a table with no rows still names its columns)."""
        source = self._source()
        try:
            first = True
            for names, rows in getattr(self, f"_scan_{self.config.format}")(source, batch_rows):
                if first:
                    self._check_header(names)
                    first = False
                yield names, rows
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - a reader's own message may quote values: not passed on
            raise DatasetError(f"dataset {self.id}: {self.config.format} could not be read ({type(exc).__name__})") from None

    def _source(self) -> Path:
        """The file to read, resolved: a regular file (a FIFO would block the reader forever, a device
        or a sparse file never end), not reached through a link out of its own directory (a link to
        the node key would make its first line the column names that GET /datasets shows)."""
        path = self.config.path
        try:
            real = path.resolve(strict=True)
            regular = stat.S_ISREG(real.stat().st_mode)
        except FileNotFoundError:
            raise DatasetError(f"dataset {self.id}: {path} does not exist") from None
        except (OSError, RuntimeError) as exc:  # a link loop, a directory we may not read
            raise DatasetError(f"dataset {self.id}: {path} cannot be opened ({type(exc).__name__})") from None
        if not regular:
            raise DatasetError(f"dataset {self.id}: {path} is not a regular file")
        if not real.is_relative_to(path.parent.resolve()):
            raise DatasetError(f"dataset {self.id}: {path} links to a file outside its directory")
        return real

    def _open(self, source: Path) -> int:
        """A descriptor of ``source``, checked again once open (it may have been swapped since
        ``_source``): non-blocking, so that a FIFO put there since cannot hold the reader."""
        try:
            return open_regular(source, follow=False)
        except FileRefused:
            raise DatasetError(f"dataset {self.id}: {self.config.path} is not a regular file") from None

    def _check_header(self, names: Sequence[str]) -> None:
        if len(names) > MAX_COLUMNS:
            raise DatasetError(f"dataset {self.id}: the header has {len(names)} columns, more than {MAX_COLUMNS}")
        if len(set(names)) != len(names):  # the commitment's row object would keep one value per name
            raise DatasetError(f"dataset {self.id}: the header repeats a column name")

    def _scan_csv(self, source: Path, batch_rows: int):
        with open(self._open(source), newline="", encoding="utf-8-sig") as f:
            lines = _BoundedLines(f)
            reader = csv.reader(lines, delimiter=self.config.delimiter)
            try:
                header = next(reader, None)
                if header is None:
                    raise DatasetError(f"dataset {self.id}: {self.config.path.name} has no header row")
                lines.chars = 0  # each record is bounded on its own
                yield header, []
                batch: list[Sequence[Any]] = []
                for row in reader:
                    lines.chars = 0
                    if len(row) != len(header):
                        if not row:
                            continue  # a blank line
                        raise DatasetError(f"dataset {self.id}: line {reader.line_num} has {len(row)} fields, "
                                           f"the header has {len(header)}")
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        yield header, batch
                        batch = []
                if batch:
                    yield header, batch
            except _RecordTooLarge:
                raise DatasetError(f"dataset {self.id}: line {reader.line_num + 1}: a record larger than "
                                   f"{MAX_RECORD_CHARS} characters") from None
            except csv.Error as exc:  # its messages name limits and dialect characters, never values
                raise DatasetError(f"dataset {self.id}: line {reader.line_num}: {exc}") from None
            except UnicodeDecodeError:  # decoded ahead of the parser: the line is only roughly known
                raise DatasetError(f"dataset {self.id}: not UTF-8 text (after line {reader.line_num})") from None

    def _scan_parquet(self, source: Path, batch_rows: int):
        import pyarrow.parquet as pq

        with open(self._open(source), "rb") as f:
            pf = pq.ParquetFile(f)
            names = list(pf.schema_arrow.names)
            yield names, []
            for record_batch in pf.iter_batches(batch_size=batch_rows):
                cols = [record_batch.column(i).to_pylist() for i in range(record_batch.num_columns)]
                yield names, list(zip(*cols))

    def _scan_sqlite(self, source: Path, batch_rows: int):
        uri = f"file:{source}?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            cursor = conn.execute(f'SELECT * FROM "{self.config.table}"')  # table name checked by the model
            names = [d[0] for d in cursor.description]
            yield names, []
            while True:
                rows = cursor.fetchmany(batch_rows)
                if not rows:
                    break
                yield names, rows
        except sqlite3.OperationalError:
            raise DatasetError(f"dataset {self.id}: table {self.config.table} cannot be read") from None
        finally:
            conn.close()

    def columns(self) -> list[str]:
        for names, _ in self.scan(batch_rows=1):
            return list(names)
        return []

    def load(self, columns: Sequence[str] = ()) -> Loaded:
        """The values of ``columns`` and the commitment of every row: from the imported copy
        while the source is unchanged, otherwise in one pass over the source (which imports it)."""
        if self._copies is None:
            return self._scan_all(columns)
        with self._lock:
            return self._from_copy(columns) or self._scan_all(columns)

    def _scan_all(self, columns: Sequence[str]) -> Loaded:
        builder = MerkleBuilder()
        fp = self._fingerprint()
        copy = _CopyWriter(self._copies, self.id) if self._copies is not None and self.config.format == "csv" else None
        wanted: dict[str, list[Any]] = {c: [] for c in columns}
        index: list[int] | None = None
        names: list[str] = []
        try:
            for names, rows in self.scan():
                if index is None:
                    self._require(columns, names)
                    index = [names.index(c) for c in columns]
                builder.add_rows(names, rows)
                for c, i in zip(columns, index):
                    wanted[c].extend(r[i] for r in rows)
                if copy is not None and rows:
                    copy.add(names, rows)
            root = builder.root()
            if self._fingerprint() == fp:  # a file written to while it was read is imported next time
                self._cached = (fp, root, builder.count)
                if self._copies is not None:
                    self._keep(fp, root, builder.count, copy if builder.count else None)
            return Loaded(self.id, root, builder.count, wanted)
        finally:
            if copy is not None:
                copy.discard()  # unless finished: a failed or raced import leaves no temp file

    def _require(self, columns: Sequence[str], names: Sequence[str]) -> None:
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetError(f"dataset {self.id} has no column {', '.join(missing)}")

    # -- the imported copy ------------------------------------------------------------------------
    def _meta_path(self) -> Path:
        return self._copies / f"{self.id}.json"

    def _copy_path(self) -> Path:
        return self._copies / f"{self.id}.arrow"

    def _numbers_path(self) -> Path:
        return self._copies / f"{self.id}.arrow.numbers"  # no dataset's copy or metadata has this name

    def _numbers(self, meta: dict, columns: Sequence[str]) -> dict[str, Any]:
        """The requested columns the copy's numbers file holds; none if it is missing, not this
        node's own, or not the size the import recorded (a job then casts the text itself)."""
        import pyarrow as pa

        kept = meta.get("numbers") or {}
        wanted = [c for c in columns if c in (kept.get("columns") or ())]
        path = self._numbers_path()
        try:
            if not wanted or not _private(path) or path.stat().st_size != kept.get("bytes") \
                    or _sha256(path) != kept.get("sha256"):  # edited in place: the size alone would not tell
                return {}
            table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
            if table.num_rows != meta["rows"]:
                return {}
            return {c: table.column(c) for c in wanted}
        except (OSError, KeyError, ValueError, pa.ArrowException):
            return {}

    def _keep(self, fp: tuple, root: str, rows: int, copy: "_CopyWriter | None") -> None:
        meta = {"source": str(self.config.path), "format": self.config.format, "delimiter": self.config.delimiter,
                "fingerprint": fp, "commitment": root, "rows": rows}
        try:
            self._copies.mkdir(mode=0o700, parents=True, exist_ok=True)
            if copy is not None and copy.alive:
                meta["copy_bytes"] = copy.finish()
                numbers = _write_numbers(copy.path, self._numbers_path())
                if numbers is not None:
                    meta["numbers"] = numbers
                else:
                    self._numbers_path().unlink(missing_ok=True)
            meta["digest"] = _digest(meta, self._copy_path() if "copy_bytes" in meta else None)
            _write_private(self._meta_path(), json.dumps(meta).encode())
        except OSError as exc:  # a full disk costs speed, not the job
            log.warning("dataset %s: no imported copy kept (%s)", self.id, type(exc).__name__)

    def _from_copy(self, columns: Sequence[str]) -> Loaded | None:
        """The columns from the imported copy, or None (no copy, a stale or unreadable one)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            arrow = self._copy_path()
            if not _private(self._copies, directory=True) or not _private(self._meta_path()) \
                    or self.config.format == "csv" and not _private(arrow):
                return None  # a copy someone else could have written is not evidence of the committed rows
            meta = json.loads(self._meta_path().read_bytes())
            fp = self._fingerprint()
            if (meta.get("source"), meta.get("format"), meta.get("delimiter")) != \
                    (str(self.config.path), self.config.format, self.config.delimiter) \
                    or _tuples(meta.get("fingerprint")) != fp:
                return None
            if meta.get("digest") != _digest(meta, arrow if self.config.format == "csv" else None):
                return None  # bytes edited in place, another dataset's copy swapped in, a root changed
            root, rows = meta["commitment"], meta["rows"]
            if self.config.format == "csv":
                if arrow.stat().st_size != meta["copy_bytes"]:
                    return None
                table = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
            else:
                source = pq.ParquetFile(self.config.path)
                table = source.read(columns=[c for c in dict.fromkeys(columns) if c in source.schema_arrow.names])
            self._require(columns, table.column_names)
            if table.num_rows != rows:
                return None
            arrow = ARROW_COLUMNS.get()
            wanted = {c: table.column(c) if arrow else table.column(c).to_pylist() for c in columns}
            numbers = self._numbers(meta, columns) if arrow and self.config.format == "csv" else {}
            if self._fingerprint() != fp:  # changed while read
                return None
        except DatasetError:
            raise
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            return None  # no copy yet, or one that cannot be trusted: import again
        self._cached = (fp, root, rows)
        return Loaded(self.id, root, rows, wanted, numbers)

    # -- the commitment without a job (for the API and the CLI) -------------------------------------
    def _fingerprint(self) -> tuple:
        paths = [self.config.path]
        if self.config.format == "sqlite":
            paths.append(Path(f"{self.config.path}-wal"))
        out = []
        for p in paths:
            try:  # ctime: a write that restores size and mtime still changes it
                st = p.stat()
                out.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def summary(self) -> tuple[str, int]:
        """(commitment, rows), recomputed only when the file changed since the last time."""
        cached = self.cached_summary()
        if cached is not None:
            return cached
        loaded = self.load(())  # which keeps the summary, unless the file changed while it was read
        return loaded.commitment, loaded.rows

    def cached_summary(self) -> tuple[str, int] | None:
        if self._cached is not None and self._cached[0] == self._fingerprint():
            return self._cached[1], self._cached[2]
        return None


def _private(path: Path, directory: bool = False) -> bool:
    """``path`` is this node's own: its user's, not a symlink, a directory no one else may write
    to, a file no one else may read or write. A copy others could have written could hold rows
    the listing never committed."""
    st = path.lstat()
    if directory:
        return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _digest(meta: dict, copy: Path | None) -> str:
    """SHA-256 over what the metadata claims (the dataset's source, its identity, root and row count)
    and the copy's bytes, kept in the metadata and checked before each use: a copy whose bytes were
    edited, or swapped with another dataset's of the same size and row count, or metadata whose root
    was changed, no longer matches and is imported again. It finds damage and mistakes; someone who
    can write as the node's user can also recompute it (and could read the node key)."""
    claims = [meta.get(k) for k in ("source", "format", "delimiter", "fingerprint", "commitment", "rows", "copy_bytes")]
    h = hashlib.sha256(json.dumps(claims).encode())
    if copy is not None:
        h.update(bytes.fromhex(_sha256(copy)))
    return h.hexdigest()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _tuples(value: Any) -> tuple:
    """A fingerprint read back from JSON (lists) as the tuple ``_fingerprint`` returns."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in value or ())


def _write_numbers(copy: Path, path: Path) -> dict[str, Any] | None:
    """Beside a CSV dataset's copy: each of its columns that Arrow's text-to-float64 cast parses
    whole, cast once here (Arrow IPC, 0600), so that a job summing them reads doubles instead of
    parsing text every time (aggregation.numeric casts the same way, so the values are the same).
    {"columns", "bytes"} for the dataset's metadata, or None (no such column, or it could not be
    written: a job then casts the text itself)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        table = pa.ipc.open_file(pa.memory_map(str(copy))).read_all()
        cast = {}
        for name in table.column_names:
            try:
                cast[name] = pc.cast(table.column(name), pa.float64()).combine_chunks()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                continue  # not every value a number: the job's own cast refuses it the same way
        if not cast:
            return None
        numbers = pa.table(cast)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as sink, pa.ipc.new_file(sink, numbers.schema) as writer:
            writer.write_table(numbers)
        os.replace(tmp, path)
        return {"columns": list(cast), "bytes": path.stat().st_size, "sha256": _sha256(path)}
    except (OSError, pa.ArrowException) as exc:
        log.warning("dataset copy %s: no numbers kept beside it (%s)", copy.name, type(exc).__name__)
        tmp.unlink(missing_ok=True)
        return None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, readable by this node's user only."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class _RecordTooLarge(Exception):
    pass


class _BoundedLines:
    """A text file's lines for csv.reader, refusing a record (the lines since ``chars`` was last
    reset) longer than MAX_RECORD_CHARS: a line is read at most that far, so a file with no newline
    (a sparse file, a field of gigabytes) costs bounded memory."""

    def __init__(self, f):
        self._f, self.chars = f, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._f.readline(MAX_RECORD_CHARS + 1 - self.chars)
        if not line:
            raise StopIteration
        self.chars += len(line)
        if self.chars > MAX_RECORD_CHARS:
            raise _RecordTooLarge
        return line


class _CopyWriter:
    """The Arrow IPC copy of a CSV dataset, written batch by batch during the import's one pass
    (every column a string, as the CSV reader gives them), renamed into place by ``finish``. A copy
    that cannot be written (a read-only data volume, a full disk) costs speed, never the job: the
    writer logs it once and stops writing."""

    def __init__(self, copies: Path, dataset_id: str):
        self.id, self.path = dataset_id, copies / f"{dataset_id}.arrow"
        self._tmp = copies / f".{dataset_id}.arrow.{uuid.uuid4().hex}.tmp"
        self._sink = self._writer = None
        self.alive = self._guard(lambda: self._prepare(copies))

    def _prepare(self, copies: Path) -> None:
        copies.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in copies.glob(f".{self.id}.*.tmp"):  # an import a crash cut short (ids have no glob characters)
            stale.unlink(missing_ok=True)

    def _guard(self, step) -> bool:
        try:
            step()
            return True
        except OSError as exc:
            log.warning("dataset %s: no imported copy kept (%s)", self.id, type(exc).__name__)
            self.discard()
            return False

    def add(self, names: list[str], rows: list[Sequence[Any]]) -> None:
        if self.alive:
            self.alive = self._guard(lambda: self._add(names, rows))

    def _add(self, names: list[str], rows: list[Sequence[Any]]) -> None:
        import pyarrow as pa

        if self._writer is None:
            schema = pa.schema([(n, pa.string()) for n in names])
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._sink = os.fdopen(fd, "wb")
            self._writer = pa.ipc.new_file(self._sink, schema)
        cols = list(zip(*rows))
        self._writer.write_batch(pa.record_batch([pa.array(c, pa.string()) for c in cols], names=names))

    def finish(self) -> int:
        self._writer.close()
        self._sink.close()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path.stat().st_size

    def discard(self) -> None:
        if self._writer is not None:
            self._sink.close()
            self._writer = None
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError:  # no directory to hold it: nothing was written
            pass


class Datasets:
    """The registry of this node's datasets, by id and by the asset they back."""

    def __init__(self, datasets: list[Dataset] | None = None):
        self._by_id: dict[str, Dataset] = {}
        for d in datasets or []:
            self.add(d)

    def add(self, dataset: Dataset) -> None:
        if dataset.id in self._by_id:
            raise DatasetError(f"dataset id {dataset.id} is configured twice")
        if dataset.asset and self.for_asset(dataset.asset) is not None:
            raise DatasetError(f"asset {dataset.asset} is bound to two datasets")
        self._by_id[dataset.id] = dataset

    def get(self, dataset_id: str) -> Dataset | None:
        return self._by_id.get(dataset_id)

    def for_asset(self, asset: str) -> Dataset | None:
        return next((d for d in self._by_id.values() if d.asset == asset), None)

    def all(self) -> list[Dataset]:
        return list(self._by_id.values())

    @classmethod
    def from_path(cls, path: Path | None, copies: Path | None = None) -> "Datasets":
        """From a JSON file or a directory of them; no path means no datasets. ``copies``: where
        a node keeps its imported copies (none: every load reads and hashes the source)."""
        if path is None:
            return cls()
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.json"))
        elif path.exists():
            files = [path]
        else:
            raise DatasetError(f"{path} does not exist")
        registry = cls()
        for file in files:
            for entry in _entries(file):
                try:
                    config = DatasetConfig.model_validate(entry)
                except ValidationError as exc:
                    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
                    raise DatasetError(f"{file.name}: invalid dataset entry ({where})") from None
                if not config.path.is_absolute():  # its last part not resolved: Dataset._source checks where a link leads
                    config = config.model_copy(update={"path": Path(os.path.normpath(file.parent.resolve() / config.path))})
                registry.add(Dataset(config, copies))
        return registry


def _entries(file: Path) -> list[dict]:
    try:  # a FIFO, a device or a directory named *.json is refused, never waited on or read without end
        data = read_regular(file, MAX_DESCRIPTION_BYTES)
    except OSError as exc:
        raise DatasetError(f"{file} {reason(exc)}") from None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DatasetError(f"{file}: not a readable JSON file ({type(exc).__name__})") from None
    if isinstance(raw, dict) and "datasets" in raw:
        raw = raw["datasets"]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise DatasetError(f"{file}: expected a dataset object, a list of them, or {{\"datasets\": [...]}}")
    return raw


def main(argv: list[str]) -> int:
    """``python -m services.compute.datasets CONFIG``: each dataset's commitment, for listing it."""
    if len(argv) != 1:
        print("usage: python -m services.compute.datasets DATASETS.json|DIR", file=sys.stderr)
        return 2
    try:
        registry = Datasets.from_path(Path(argv[0]))
        for d in registry.all():
            root, rows = d.summary()
            print(json.dumps({"id": d.id, "asset": d.asset, "rows": rows, "commitment": root}))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
