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
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.compute.commitment import MerkleBuilder

BATCH_ROWS = 65_536
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
    """What a job gets from a dataset: the requested columns' values and the commitment of all rows."""

    dataset: str
    commitment: str
    rows: int
    columns: dict[str, list[Any]] = field(default_factory=dict)


class Dataset:
    def __init__(self, config: DatasetConfig):
        if config.format == "sqlite" and not config.table:
            raise DatasetError(f"dataset {config.id}: a sqlite dataset needs a table")
        self.config = config
        self._cached: tuple[tuple, str, int] | None = None  # (fingerprint, commitment, rows)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def asset(self) -> str | None:
        return self.config.asset

    # -- reading ----------------------------------------------------------------------------------
    def scan(self, batch_rows: int = BATCH_ROWS) -> Iterator[tuple[list[str], list[Sequence[Any]]]]:
        """(column names, a batch of rows) until the dataset is exhausted."""
        if not self.config.path.exists():
            raise DatasetError(f"dataset {self.id}: {self.config.path} does not exist")
        try:
            yield from getattr(self, f"_scan_{self.config.format}")(batch_rows)
        except DatasetError:
            raise
        except Exception as exc:  # noqa: BLE001 - a reader's own message may quote values: not passed on
            raise DatasetError(f"dataset {self.id}: {self.config.format} could not be read ({type(exc).__name__})") from None

    def _scan_csv(self, batch_rows: int):
        with open(self.config.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=self.config.delimiter)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"dataset {self.id}: {self.config.path.name} has no header row")
            if len(set(header)) != len(header):
                raise DatasetError(f"dataset {self.id}: the header repeats a column name")
            batch: list[Sequence[Any]] = []
            for row in reader:
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

    def _scan_parquet(self, batch_rows: int):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.config.path)
        names = list(pf.schema_arrow.names)
        for record_batch in pf.iter_batches(batch_size=batch_rows):
            cols = [record_batch.column(i).to_pylist() for i in range(record_batch.num_columns)]
            yield names, list(zip(*cols))

    def _scan_sqlite(self, batch_rows: int):
        uri = f"file:{self.config.path}?mode=ro"
        conn = sqlite3.connect(uri, uri=True)
        try:
            cursor = conn.execute(f'SELECT * FROM "{self.config.table}"')  # table name checked by the model
            names = [d[0] for d in cursor.description]
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
        if self.config.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(self.config.path).schema_arrow.names)
        return []

    def load(self, columns: Sequence[str] = ()) -> Loaded:
        """One pass: the commitment over every row, and the values of ``columns``."""
        builder = MerkleBuilder()
        wanted: dict[str, list[Any]] = {c: [] for c in columns}
        index: list[int] | None = None
        names: list[str] = []
        for names, rows in self.scan():
            if index is None:
                missing = [c for c in columns if c not in names]
                if missing:
                    raise DatasetError(f"dataset {self.id} has no column {', '.join(missing)}")
                index = [names.index(c) for c in columns]
            builder.add_rows(names, rows)
            for c, i in zip(columns, index):
                wanted[c].extend(r[i] for r in rows)
        if index is None and columns:
            if not names:
                names = self.columns()
            missing = [c for c in columns if c not in names]
            if missing:
                raise DatasetError(f"dataset {self.id} has no column {', '.join(missing)}")
        root = builder.root()
        self._cached = (self._fingerprint(), root, builder.count)
        return Loaded(self.id, root, builder.count, wanted)

    # -- the commitment without a job (for the API and the CLI) -------------------------------------
    def _fingerprint(self) -> tuple:
        paths = [self.config.path]
        if self.config.format == "sqlite":
            paths.append(Path(f"{self.config.path}-wal"))
        out = []
        for p in paths:
            try:
                st = p.stat()
                out.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def summary(self) -> tuple[str, int]:
        """(commitment, rows), recomputed only when the file changed since the last time."""
        fp = self._fingerprint()
        if self._cached is None or self._cached[0] != fp:
            loaded = self.load(())
            self._cached = (fp, loaded.commitment, loaded.rows)
        return self._cached[1], self._cached[2]

    def cached_summary(self) -> tuple[str, int] | None:
        if self._cached is not None and self._cached[0] == self._fingerprint():
            return self._cached[1], self._cached[2]
        return None


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
    def from_path(cls, path: Path | None) -> "Datasets":
        """From a JSON file or a directory of them; no path means no datasets."""
        if path is None:
            return cls()
        path = Path(path)
        if path.is_dir():
            files = sorted(path.glob("*.json"))
        elif path.exists():
            files = [path]
        else:
            raise DatasetError(f"RDX_DATASETS: {path} does not exist")
        registry = cls()
        for file in files:
            for entry in _entries(file):
                try:
                    config = DatasetConfig.model_validate(entry)
                except ValidationError as exc:
                    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
                    raise DatasetError(f"{file.name}: invalid dataset entry ({where})") from None
                if not config.path.is_absolute():
                    config = config.model_copy(update={"path": (file.parent / config.path).resolve()})
                registry.add(Dataset(config))
        return registry


def _entries(file: Path) -> list[dict]:
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
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
