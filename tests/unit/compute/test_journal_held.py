"""The journal's held state (issue 16): a provider's release key and a consumer's held-back
messages kept across a restart in 0600 files of the node's own state, gone when the job ends."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from services.compute.journal import Journal


def _journal(tmp_path) -> Journal:
    return Journal(sqlite3.connect(tmp_path / "node.sqlite", isolation_level=None))


def test_held_state_survives_a_new_journal_in_private_files_and_goes_when_the_job_ends(tmp_path):
    j = _journal(tmp_path)
    j.add("job-1", "psi", "provider", {"job": "job-1"}, 2**40, 1)
    j.put_held("job-1", "release_key", b"\x01" * 32)
    j.put_held("job-1", "pending", b"held-back bytes")
    again = _journal(tmp_path)  # a restarted node
    assert again.held("job-1", "release_key") == b"\x01" * 32 and again.held("job-1", "pending") == b"held-back bytes"
    held = tmp_path / "held"
    assert stat.S_IMODE(held.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in held.iterdir()} == {0o600}
    assert again.end("job-1", "completed")
    assert again.held("job-1", "release_key") is None and list(held.iterdir()) == []


@pytest.mark.parametrize("job,name", [("../etc", "pending"), (".hidden", "pending"), ("job-1/x", "pending"),
                                      ("job-1", "other"), ("job-1", "../pending")])
def test_held_state_refuses_a_name_that_is_not_a_job_id_and_a_known_kind(tmp_path, job, name):
    j = _journal(tmp_path)
    with pytest.raises(ValueError):
        j.put_held(job, name, b"x")
    j.drop_held(job)  # never raises: nothing can have been kept under it
    assert not (tmp_path / "held").exists() or list((tmp_path / "held").iterdir()) == []


def test_an_in_memory_journal_keeps_held_state_in_memory():
    j = Journal(sqlite3.connect(":memory:", isolation_level=None))
    j.put_held("job-1", "attestation", b"{}")
    assert j.held_dir is None and j.held("job-1", "attestation") == b"{}"


def test_has_held_says_what_held_would_find(tmp_path):
    j = Journal(sqlite3.connect(tmp_path / "j.sqlite"))
    assert not j.has_held("job-1", "pending")
    j.put_held("job-1", "pending", b"x" * 10)
    assert j.has_held("job-1", "pending") and not j.has_held("job-1", "release_key")
    j.drop_held("job-1")
    assert not j.has_held("job-1", "pending")


def test_a_journal_from_before_the_latency_marks_gains_them_and_keeps_its_jobs(tmp_path):
    """A node upgraded in place: its journal's jobs table has no ``timings`` column yet."""
    from services.compute.journal import SCHEMA
    old = SCHEMA.replace(",\n    timings TEXT", "")
    assert old != SCHEMA  # the column this test is about is in the schema it takes out
    conn = sqlite3.connect(tmp_path / "node.sqlite", isolation_level=None)
    conn.executescript(old)
    Journal(conn).add("job-0", "psi", "consumer", {"job": "job-0"}, 2**40, 1)
    conn.execute("ALTER TABLE jobs DROP COLUMN timings")  # as an older node left it
    conn.close()
    j = _journal(tmp_path)
    assert j.get("job-0") is not None and j.get("job-0").timings is None
    j.update("job-0", timings={"received": 1.5})
    assert _journal(tmp_path).get("job-0").timings == {"received": 1.5}
