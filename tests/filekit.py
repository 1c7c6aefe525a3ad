"""Broken and hostile files where a setting names a small file (a key, a CA, a JSON description),
shared by the unit tests of each service that reads one at start or on reload."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

CANARY = "CANARY-5d1e2"  # planted in a file's bytes: no message or log line may show it
# Each kind of file that is not what a setting needs, and what a reader must not do with it.
NOT_REGULAR = ("fifo", "directory", "dev-zero")  # wait for a writer forever; a directory; endless bytes
BROKEN = ("huge", "not utf-8", "deep nesting", "wrong types")


def plant(path: Path, kind: str) -> Path:
    """Put a file of ``kind`` (NOT_REGULAR, BROKEN) at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "huge":  # sparse: 4 GiB that take no disk
        path.write_text('{"' + CANARY + '": "')
        os.truncate(path, 4 << 30)
    elif kind == "not utf-8":
        path.write_bytes(b'{"' + CANARY.encode() + b'": "\xff\xfe"}')
    elif kind == "deep nesting":
        path.write_text("[" * 50_000 + CANARY)
    elif kind == "wrong types":
        path.write_text('{"account": ["' + CANARY + '"], "secret_key": 7, "nodes": 7, "datasets": 7}')
    else:
        raise ValueError(kind)
    return path


def within(seconds: float, fn):
    """fn's result (or exception) if it ends within ``seconds``; a hang fails the test, not the run."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def stops(fn, setting: str, reason: str) -> str:
    """The start ``fn`` makes stops within 10 s with SystemExit: one line, ``<setting>: …`` with
    ``reason`` in it, no CANARY, no chained reader's message (which may quote the file)."""
    with pytest.raises(SystemExit) as err:
        within(10, fn)
    message = str(err.value.code)
    assert message.startswith(f"{setting}: ") and reason in message, message
    assert CANARY not in message and "\n" not in message
    assert err.value.__context__ is None or err.value.__suppress_context__
    return message
