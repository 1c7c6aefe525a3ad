"""A dataset's commitment: the SHA-256 Merkle root of its canonicalised rows.

The provider lists an asset with this root; before a job uses the data, the node computes the
root again from the very rows it reads, and refuses the job if the two differ. The rules below
are the whole definition (also in docs/compute.md), so anyone can recompute a root:

1. **A value** becomes text: ``null`` stays JSON null; a string is itself (CSV fields are
   strings, an empty field is ``""``); an integer is its decimal digits; a float is Python's
   shortest round-trip ``repr`` (``1.5``, ``1e-07``, ``nan``, ``inf``); a boolean is ``true`` /
   ``false``; bytes are lower-case hex; a date or datetime is ISO 8601; a Decimal is ``str()``.
   So the same table gives the same root from CSV, Parquet or SQLite.
2. **A row** is the UTF-8 JSON object ``{column: text}`` with keys sorted, no whitespace, non-ASCII
   characters kept (``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
3. **A leaf** is ``SHA-256(0x00 || row)``.
4. Leaves are **sorted** (bytewise), so the root does not depend on row order: a dataset is a
   multiset of rows. Duplicated rows stay duplicated.
5. **A level** pairs neighbours: ``SHA-256(0x01 || left || right)``; an odd last node is carried
   up unchanged. The root is the single node left; an empty dataset's root is ``SHA-256("")``.

The 0x00/0x01 prefixes keep leaves and inner nodes apart (no second-preimage by presenting
an inner node as a row). The sorted order also makes per-row inclusion proofs possible later.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def canonical_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (_dt.date, _dt.datetime, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def canonical_row(columns: Sequence[str], values: Sequence[Any]) -> bytes:
    row = {c: canonical_value(v) for c, v in zip(columns, values)}
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def leaf(row: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + row).digest()


class MerkleBuilder:
    """Collects leaves (32 bytes each, in one bytearray: 32 MB per million rows) and gives the root."""

    def __init__(self) -> None:
        self._leaves = bytearray()
        self.count = 0

    def add_rows(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        out, n = self._leaves, 0
        for values in rows:
            out += leaf(canonical_row(columns, values))
            n += 1
        self.count += n

    def root(self) -> str:
        return _root_of_blob(self._leaves)


def merkle_root(leaves: list[bytes]) -> str:
    """The root (hex) over ``leaves`` (their order does not matter: they are sorted first)."""
    return _root_of_blob(b"".join(leaves))


def _root_of_blob(blob: bytes | bytearray) -> str:
    """Leaves as one blob of 32-byte digests: sorted with numpy (fixed-width byte strings of equal
    length sort bytewise), then hashed level by level. ~70 bytes a row at most, at any time."""
    if not blob:
        return EMPTY_ROOT
    level = np.sort(np.frombuffer(blob, dtype="S32")).tobytes()
    sha = hashlib.sha256
    while len(level) > 32:
        n = len(level)
        nxt = b"".join([sha(b"\x01" + level[i:i + 64]).digest() for i in range(0, n - 32, 64)])
        if (n // 32) % 2:
            nxt += level[-32:]
        level = nxt
    return level.hex()


def commitment_of(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The commitment of a table given as column names and row value sequences."""
    builder = MerkleBuilder()
    builder.add_rows(list(columns), rows)
    return builder.root()
