"""The job journal (SQLite): what this node was asked to do, how far it got, and how it ended.

It lives in the same database as the chain-event consumer's applied-event log, so recording
"job X is authorised and mine" and "event E is applied" commit together: after a crash a job
is either journaled or its event is delivered again. A restarted node reads the journal and
resumes or fails every job that had not ended (lifecycle.JobManager.recover).

Statuses::

    pending ──► running ──► computed ──► attested ──► completed
       │           │            │            │
       └───────────┴────────────┴────────────┴──────► failed | aborted

``computed``: this node's part is done and its result hash known (if the job type gives this
node's member a result, it is stored, sealed); ``attested``: its jobs.Attest is on chain. The
three ends mirror the chain's (JobCompleted, JobFailed, JobAborted).

Results: at most one sealed envelope per job, for this node's own member (results.py). It is
stored only while the job is active here, and dropped when the job fails or is aborted, so
nothing partial or unpaid is kept; the API releases it once the job is completed.

Held state (issue 16, fair exchange): what a job needs after this node attested — a provider's
release key, a consumer's held-back messages, the attestation's record counts and release
hashes — is kept in files ``held/<job>.<name>`` beside the database, each created with mode 0600
in a 0700 directory (the database file itself is not private: the Kafka consumer creates it), so
that a node restarted after its attestation can still publish its key or open its result. It is
dropped when the job ends here. Nothing of it is ever logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("rdx.compute.journal")

ACTIVE = ("pending", "running", "computed", "attested")
TERMINAL = ("completed", "failed", "aborted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    role TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    result_hash TEXT,
    records_used INTEGER,
    summary TEXT,
    progress TEXT,
    deadline INTEGER NOT NULL,
    authorized_height INTEGER,
    received_at REAL NOT NULL,
    started_at REAL,
    computed_at REAL,
    ended_at REAL,
    stop_requested_at REAL,
    stopped_ms REAL,
    settlement TEXT,
    status_seq INTEGER NOT NULL DEFAULT 0,
    timings TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS results (
    job TEXT PRIMARY KEY,
    envelope BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass
class JobRow:
    job: str
    type: str
    role: str
    spec: dict[str, Any]
    status: str
    attempt: int
    reason: str | None
    result_hash: str | None
    records_used: int | None
    summary: dict[str, Any] | None
    progress: dict[str, Any] | None
    deadline: int
    authorized_height: int | None
    received_at: float
    started_at: float | None
    computed_at: float | None
    ended_at: float | None
    stop_requested_at: float | None
    stopped_ms: float | None
    settlement: dict[str, Any] | None
    status_seq: int
    timings: dict[str, float] | None = None  # mark -> epoch seconds (lifecycle.MARKS)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def public(self) -> dict[str, Any]:
        """What the node's HTTP API shows: ids, states, counts and times; never data values."""
        return {"job": self.job, "type": self.type, "role": self.role, "status": self.status,
                "attempt": self.attempt, "reason": self.reason, "result_hash": self.result_hash,
                "records_used": self.records_used, "progress": self.progress, "deadline": self.deadline,
                "consumer": self.spec.get("consumer"), "participants": self.spec.get("participants"),
                "inputs": [{k: i[k] for k in ("asset", "provider", "version")} for i in self.spec.get("inputs", [])],
                "received_at": self.received_at, "started_at": self.started_at, "computed_at": self.computed_at,
                "ended_at": self.ended_at, "stopped_ms": self.stopped_ms, "settlement": self.settlement,
                "timings": self.timings or {}}


_JSON_FIELDS = ("spec", "summary", "progress", "settlement", "timings")


HELD = ("release_key", "pending", "attestation")  # what a job may hold: lifecycle.py says what each is
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")  # the chain's pattern: no path separator, no leading dot


class Journal:
    def __init__(self, conn: sqlite3.Connection, held_dir: Path | None = None):
        self.conn = conn
        conn.executescript(SCHEMA)
        if "timings" not in {c[1] for c in conn.execute("PRAGMA table_info(jobs)")}:  # a journal from before it
            conn.execute("ALTER TABLE jobs ADD COLUMN timings TEXT")
        self._names = [d[0] for d in conn.execute("SELECT * FROM jobs LIMIT 0").description]
        if held_dir is None:  # beside the database file; an in-memory database keeps it in memory
            db_file = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
            held_dir = Path(db_file).parent / "held" if db_file else None
        self.held_dir = held_dir
        self._held_in_memory: dict[str, bytes] = {}

    def _row(self, raw: sqlite3.Row | tuple | None) -> JobRow | None:
        if raw is None:
            return None
        values = dict(zip(self._names, raw))
        for f in _JSON_FIELDS:
            try:
                values[f] = json.loads(values[f]) if values[f] else None
            except (ValueError, TypeError):  # damaged on disk: one row must not stop every reader of the journal
                log.warning("journal: job %s has an unreadable %s; read as empty", values["job"], f)
                values[f] = None
        # a job runs on the chain's spec (_chain_spec); the journal's copy only matches events to jobs
        values["spec"] = values["spec"] if isinstance(values["spec"], dict) else {}
        return JobRow(**values)

    def get(self, job: str) -> JobRow | None:
        return self._row(self.conn.execute("SELECT * FROM jobs WHERE job = ?", (job,)).fetchone())

    def add(self, job: str, type_: str, role: str, spec: dict[str, Any], deadline: int, height: int | None) -> bool:
        """Journal a newly authorised job; False if it was already there."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO jobs (job, type, role, spec, status, deadline, authorized_height, received_at) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
            (job, type_, role, json.dumps(spec, sort_keys=True), deadline, height, time.time()))
        return cur.rowcount == 1

    def update(self, job: str, **fields: Any) -> None:
        if not fields:
            return
        for f in _JSON_FIELDS:
            if f in fields and fields[f] is not None:
                fields[f] = json.dumps(fields[f], sort_keys=True)
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE jobs SET {sets} WHERE job = ?", (*fields.values(), job))

    def end(self, job: str, status: str, reason: str | None = None, **fields: Any) -> bool:
        """Move an active job to a terminal status; False if it had already ended (the first end wins).
        Its held state goes with it."""
        assert status in TERMINAL
        sets = ", ".join(f"{k} = ?" for k in fields)
        extra = f", {sets}" if sets else ""
        cur = self.conn.execute(
            f"UPDATE jobs SET status = ?, reason = COALESCE(?, reason), ended_at = ?{extra} "
            f"WHERE job = ? AND status IN ({','.join('?' * len(ACTIVE))})",
            (status, reason, time.time(), *fields.values(), job, *ACTIVE))
        if cur.rowcount == 1:
            self.drop_held(job)
        return cur.rowcount == 1

    # -- held state (fair exchange: what this node needs after it attested) --------------------------
    def _held_path(self, job: str, name: str) -> str:
        if not _JOB_ID.match(job) or name not in HELD:
            raise ValueError("held state is kept under a job id (the chain's pattern) and one of HELD's names")
        return f"{job}.{name}"

    def put_held(self, job: str, name: str, data: bytes) -> None:
        """Keep ``data`` for ``job`` across restarts: written whole (a rename) to a 0600 file."""
        key = self._held_path(job, name)
        if self.held_dir is None:
            self._held_in_memory[key] = bytes(data)
            return
        self.held_dir.mkdir(mode=0o700, exist_ok=True)
        partial = self.held_dir / f"{key}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, self.held_dir / key)

    def has_held(self, job: str, name: str) -> bool:
        """Whether ``name`` is kept for ``job``, without reading it (a consumer's held-back messages
        can be megabytes, and this is asked on every completion)."""
        key = self._held_path(job, name)
        return key in self._held_in_memory if self.held_dir is None else (self.held_dir / key).exists()

    def held(self, job: str, name: str) -> bytes | None:
        key = self._held_path(job, name)
        if self.held_dir is None:
            return self._held_in_memory.get(key)
        try:
            return (self.held_dir / key).read_bytes()
        except FileNotFoundError:
            return None

    def drop_held(self, job: str, name: str | None = None) -> None:
        """Forget ``name`` (or everything) held for ``job``."""
        if not _JOB_ID.match(job):  # nothing can have been kept under it
            return
        names = [name] if name else HELD
        for n in names:
            key = self._held_path(job, n)
            self._held_in_memory.pop(key, None)
            if self.held_dir is not None:
                (self.held_dir / key).unlink(missing_ok=True)

    def next_seq(self, job: str) -> int:
        self.conn.execute("UPDATE jobs SET status_seq = status_seq + 1 WHERE job = ?", (job,))
        row = self.conn.execute("SELECT status_seq FROM jobs WHERE job = ?", (job,)).fetchone()
        return row[0] if row else 0

    def active(self) -> list[JobRow]:
        q = f"SELECT * FROM jobs WHERE status IN ({','.join('?' * len(ACTIVE))}) ORDER BY received_at"
        return [self._row(r) for r in self.conn.execute(q, ACTIVE).fetchall()]

    def recent(self, limit: int = 100, status: str | None = None) -> list[JobRow]:
        if status:
            rows = self.conn.execute("SELECT * FROM jobs WHERE status = ? ORDER BY received_at DESC LIMIT ?",
                                     (status, limit))
        else:
            rows = self.conn.execute("SELECT * FROM jobs ORDER BY received_at DESC LIMIT ?", (limit,))
        return [self._row(r) for r in rows.fetchall()]

    # -- sealed results (for this node's own member) ----------------------------------------------
    def put_result(self, job: str, envelope: bytes) -> bool:
        """Store (or replace) the job's sealed result; False, and nothing stored, if the job has
        ended here (checked in the same statement, so a kill switch cannot be overtaken)."""
        cur = self.conn.execute(
            "INSERT OR REPLACE INTO results (job, envelope, created_at) SELECT ?, ?, ? "
            f"WHERE EXISTS (SELECT 1 FROM jobs WHERE job = ? AND status IN ({','.join('?' * len(ACTIVE))}))",
            (job, envelope, time.time(), job, *ACTIVE))
        return cur.rowcount == 1

    def result(self, job: str) -> bytes | None:
        row = self.conn.execute("SELECT envelope FROM results WHERE job = ?", (job,)).fetchone()
        return row[0] if row else None

    def drop_result(self, job: str) -> None:
        self.conn.execute("DELETE FROM results WHERE job = ?", (job,))
