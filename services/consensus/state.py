"""The chain's state in SQLite: one key-value table written only at Commit, in one transaction.

Domain keepers read and write JSON values under their own key prefix (``members/``,
``assets/`` ...) through a ``Store`` view. During a block, writes collect in an overlay. The app
hash is the root of a sparse Merkle tree over the whole state (``merkle.py``), updated from the
block's writes; its new nodes wait in the block's overlay and are stored by Commit with the rest.
A chain made before the tree keeps the older app hash, SHA-256 over the previous app hash and the
block's sorted writes (``next_app_hash``), until its state-tree upgrade (``RdxApp._app_hash``).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from services.common import canonicaljson

_DELETED = object()
_NODE_ENTRY = 32 + 81  # a state tree node in its block's run: hash, then the node (merkle.py)
_RUN = 64  # nodes a row: ~7 KiB, so a lookup reads two pages
# Committed values kept in memory: a few blocks' working set (a value is ~0.2-2 KiB), bounded in
# bytes too, since a member chooses what some values hold (a listing's metadata, up to a tx's 64 KiB)
# and anyone who can query chooses which absent keys are asked for (paths up to 512 characters).
_CACHED_TEXTS = 50_000
_CACHED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, init=False)
class ChainEvent:
    """An event of a committed block, in the order the block produced it."""

    height: int
    tx_index: int  # -1 for events of the block itself (genesis, expiries)
    event_index: int
    time: int  # block time, unix seconds
    type: str
    entity: str
    data: dict[str, Any]
    trace: str | None = None  # the traceparent its tx carried (services/common/tx.py): not state, not hashed
    id: str = field(init=False, repr=False, compare=False)  # "height/tx_index/event_index"

    def __init__(self, height: int, tx_index: int, event_index: int, time: int, type: str, entity: str,
                 data: dict[str, Any], trace: str | None = None) -> None:
        # Made for every event in a block's execution and in the relay: the generated frozen
        # __init__ (object.__setattr__ per field) and a cached_property id cost twice this.
        self.__dict__.update(height=height, tx_index=tx_index, event_index=event_index, time=time, type=type,
                             entity=entity, data=data, trace=trace, id=f"{height}/{tx_index}/{event_index}")


class Database:
    """The committed state, the committed blocks' events (the relay's outbox) and chain metadata."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Committed values by key, read or written by a recent block: a job's three txs and an
        # account's transfers come in successive blocks, and a point SELECT per key per block was
        # ~10% of a settlement's CPU. Only ``commit_block`` writes kv, and it updates this after
        # COMMIT (the app is one thread: nothing reads in between); another Database on the same
        # file would not see those writes in its own cache (the relay's reads events and meta only).
        # Emptied when full, as the state tree's node cache is (app.VerifiedCache's oldest-first
        # eviction, bounded the same way, was not measured here: one of the two could serve both).
        self._texts: dict[str, str | None] = {}
        self._text_bytes = 0  # the characters of the keys and texts in _texts
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a block acknowledged by Commit must survive a power cut, or replay would diverge.
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS events (
                height INTEGER NOT NULL, tx_index INTEGER NOT NULL, event_index INTEGER NOT NULL,
                time INTEGER NOT NULL, type TEXT NOT NULL, entity TEXT NOT NULL, data TEXT NOT NULL,
                PRIMARY KEY (height, tx_index, event_index)) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS tree_runs (version INTEGER NOT NULL, first BLOB NOT NULL, nodes BLOB NOT NULL,
                PRIMARY KEY (version, first)) WITHOUT ROWID;
            """
        )
        if "trace" not in {row[1] for row in self.conn.execute("PRAGMA table_info(events)")}:  # made before tracing
            self.conn.execute("ALTER TABLE events ADD COLUMN trace TEXT")

    def get(self, key: str) -> Any | None:
        text = self.get_text(key)
        return None if text is None else canonicaljson.loads(text)

    def get_text(self, key: str) -> str | None:
        texts = self._texts
        if key in texts:
            return texts[key]
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        text = row[0] if row else None
        self._remember(key, text)
        return text

    def _remember(self, key: str, text: str | None) -> None:
        texts = self._texts
        if key in texts:
            old = texts.pop(key)
            self._text_bytes -= len(key) + (len(old) if old else 0)
        entry = len(key) + (len(text) if text else 0)  # keys count: a query may ask for any absent one
        if len(texts) >= _CACHED_TEXTS or self._text_bytes + entry > _CACHED_BYTES:
            texts.clear()
            self._text_bytes = 0
        texts[key] = text
        self._text_bytes += entry

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        rows = self.conn.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                                 (prefix, prefix + "\uffff"))
        for key, value in rows:
            yield key, canonicaljson.loads(value)

    def texts_of(self, keys: Iterable[str]) -> dict[str, str | None]:
        """The committed JSON text of each of ``keys`` (None where absent)."""
        keys = list(keys)
        found: dict[str, str | None] = dict.fromkeys(keys)
        for i in range(0, len(keys), 500):  # SQLite's bound on a statement's parameters
            chunk = keys[i:i + 500]
            found.update(self.conn.execute(f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * len(chunk))})",
                                           chunk).fetchall())
        return found

    def texts(self) -> Iterator[tuple[str, str]]:
        """Every (key, JSON text) of the state, in key order: the state-tree upgrade's one pass."""
        yield from self.conn.execute("SELECT key, value FROM kv ORDER BY key")

    def scan_page(self, prefix: str, *, after: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (key, JSON text) under ``prefix`` with keys after ``after``, in key order."""
        return self.conn.execute("SELECT key, value FROM kv WHERE key > ? AND key >= ? AND key < ? ORDER BY key LIMIT ?",
                                 (after, prefix, prefix + "\uffff", limit)).fetchall()

    def tree_node(self, version: int, node_hash: bytes) -> bytes | None:
        """A state tree node as stored, by the height that made it and its hash (``merkle.py``):
        the run of that height's nodes that would hold it, then a binary search in it."""
        row = self.conn.execute("SELECT nodes FROM tree_runs WHERE version = ? AND first <= ? ORDER BY first DESC "
                                "LIMIT 1", (version, node_hash)).fetchone()
        if row is None:
            return None
        run = row[0]
        lo, hi = 0, len(run) // _NODE_ENTRY
        while lo < hi:
            mid = (lo + hi) // 2
            at = mid * _NODE_ENTRY
            found = run[at:at + 32]
            if found < node_hash:
                lo = mid + 1
            elif found > node_hash:
                hi = mid
            else:
                stored = run[at + 32:at + _NODE_ENTRY]
                return stored[:65] if stored[0] == 0 else stored  # a leaf is padded to an inner node's size
        return None

    @property
    def tree_version(self) -> int:
        """The height that stored the state tree's root node (its hash is the app hash)."""
        return int(self.meta("tree_version", "0"))

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @property
    def height(self) -> int:
        return int(self.meta("height", "0"))

    @property
    def app_hash(self) -> bytes:
        return bytes.fromhex(self.meta("app_hash", ""))

    def commit_block(self, height: int, app_hash: bytes, writes: dict[str, Any], events: list[ChainEvent],
                     extra_meta: dict[str, str] | None = None, nodes: dict[bytes, bytes] | None = None,
                     tree_version: int | None = None) -> None:
        """Everything of one block, or nothing: a crash before COMMIT leaves the previous block.
        ``writes`` are an overlay's: canonical JSON text, or the deletion marker; ``nodes`` the
        state tree's new nodes of this height (hash -> stored node), ``tree_version`` its root's."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for key, value in writes.items():
                if value is _DELETED:
                    c.execute("DELETE FROM kv WHERE key = ?", (key,))
                else:
                    c.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
            if nodes:  # the block's nodes sorted by hash, in runs of _RUN (a row per node cost 4-5x)
                entries = [h + node.ljust(_NODE_ENTRY - 32, b"\0") for h, node in sorted(nodes.items())]
                c.executemany("INSERT OR REPLACE INTO tree_runs VALUES (?, ?, ?)",
                              [(height, entries[i][:32], b"".join(entries[i:i + _RUN]))
                               for i in range(0, len(entries), _RUN)])
            if tree_version is not None:
                c.execute("INSERT OR REPLACE INTO meta VALUES ('tree_version', ?)", (str(tree_version),))
            c.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                          [(e.height, e.tx_index, e.event_index, e.time, e.type, e.entity, _dump(e.data), e.trace)
                           for e in events])
            meta = {"height": str(height), "app_hash": app_hash.hex(), **(extra_meta or {})}
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        for key, value in writes.items():
            self._remember(key, None if value is _DELETED else value)

    def events_after(self, position: tuple[int, int, int], limit: int = 1000) -> list[ChainEvent]:
        rows = self.conn.execute(
            "SELECT height, tx_index, event_index, time, type, entity, data, trace FROM events "
            "WHERE (height, tx_index, event_index) > (?, ?, ?) ORDER BY height, tx_index, event_index LIMIT ?",
            (*position, limit),
        )
        return [ChainEvent(h, t, i, tm, ty, en, canonicaljson.loads(d), tr) for h, t, i, tm, ty, en, d, tr in rows]

    def close(self) -> None:
        self.conn.close()


_dump = canonicaljson.dumps


def _load(text: str) -> Any:
    """``canonicaljson.loads`` without its frame on the common path (state is read several times a tx)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return canonicaljson.loads(text)


class Overlay:
    """Uncommitted writes on top of the database: a block's, or the mempool's check state.

    Values are kept as their canonical JSON text and every ``get`` parses a fresh object, as the
    database does: a handler that mutates what it read and then rejects its tx cannot change a
    parent's state (a shared dict once let a rejected CheckTx spend its signer's nonce). The text
    is also what the digest hashes and what Commit stores, so each write is serialised once.
    """

    def __init__(self, db: Database, parent: "Overlay | None" = None):
        self.db, self.parent = db, parent
        self.writes: dict[str, Any] = {}  # key -> canonical JSON text, or _DELETED
        self.nodes: dict[bytes, bytes] = {}  # the state tree's nodes new in this block, stored at Commit
        self.tree_version: int | None = None  # the version of the tree's root after this block, if it changed

    def get(self, key: str) -> Any | None:
        text = self._text(key)
        return None if text is None else _load(text)

    def has(self, key: str) -> bool:
        return self._text(key) is not None

    def _text(self, key: str) -> str | None:
        overlay: Overlay | None = self
        while overlay is not None:  # a loop, not a call per layer: several reads a tx, through 2-3 layers
            writes = overlay.writes
            if key in writes:
                text = writes[key]
                return None if text is _DELETED else text
            overlay = overlay.parent
        return self.db.get_text(key)  # the database keeps recent blocks' values in memory

    def committed(self, key: str) -> Any | None:
        """The committed value at ``key``, whatever this overlay or its parents wrote."""
        text = self.db.get_text(key)
        return None if text is None else _load(text)

    def set(self, key: str, value: Any) -> None:
        self.writes[key] = _dump(value)

    def delete(self, key: str) -> None:
        self.writes[key] = _DELETED

    def discard(self, key: str) -> None:
        """Forget this overlay's write of ``key``: for a value that lives only within a block
        and is never committed (never written to the database, so there is nothing to delete)."""
        self.writes.pop(key, None)

    def scan(self, prefix: str) -> Iterator[tuple[str, Any]]:
        merged = dict(self.parent.scan(prefix)) if self.parent is not None else dict(self.db.scan(prefix))
        for key, value in self.writes.items():
            if key.startswith(prefix):
                if value is _DELETED:
                    merged.pop(key, None)
                else:
                    merged[key] = canonicaljson.loads(value)
        return iter(sorted(merged.items()))

    def branch(self) -> "Overlay":
        """A child overlay: one tx's writes, kept only if the tx succeeds."""
        return Overlay(self.db, self)

    def merge_into_parent(self) -> None:
        assert self.parent is not None
        self.parent.writes.update(self.writes)

    def tree_changes(self) -> dict[str, bytes | None]:
        """This overlay's writes as the state tree takes them: the stored bytes, None to delete."""
        return {key: None if value is _DELETED else value.encode() for key, value in self.writes.items()}

    def digest(self) -> bytes:
        h = hashlib.sha256()
        for key in sorted(self.writes):
            value = self.writes[key]
            h.update(key.encode() + b"\x00" + (b"\x01" if value is _DELETED else value.encode()) + b"\x00")
        return h.digest()


def next_app_hash(previous: bytes, block_digest: bytes, height: int) -> bytes:
    return hashlib.sha256(previous + height.to_bytes(8, "big") + block_digest).digest()
