"""RDX_PORTAL_GATEWAY_KEYS_FILE broken or hostile, at start and when it changes under a running
portal (it is read again on a request): the start stops with one line naming the setting; a
reload keeps the keys read before and logs why. Never a hang (the reload runs on the event loop),
an unbounded read, a traceback or a key from the file in a message."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from services.portal.gateway import Gateway, KeysFileError, load_keys
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, stops, within

GOOD = {"bank/analyst": "rdx_a.b"}


def _http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200)))


def _hostile(path, kind) -> None:
    plant(path, kind)
    if kind not in ("fifo", "dev-zero"):
        path.chmod(0o700 if kind == "directory" else 0o600)
    if kind == "fifo":
        path.chmod(0o600)  # private, so only its kind can refuse it


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN + ("missing", "a key as an entry's name"))
def test_a_bad_keys_file_stops_the_start_with_one_line(tmp_path, kind):
    path = tmp_path / "keys.json"
    if kind == "a key as an entry's name":  # the two swapped by mistake: the secret must not be echoed
        path.write_text(json.dumps({"rdx_a." + CANARY: "bank/analyst"}))
        path.chmod(0o600)
    elif kind != "missing":
        _hostile(path, kind)
    reason = {"missing": "does not exist", "huge": "larger than", "dev-zero": "readable by others",
              "a key as an entry's name": "entry 1 is not", "wrong types": "entry 1 is not"}.get(
        kind, "not a regular file" if kind in NOT_REGULAR else "is not JSON")
    stops(lambda: Gateway("http://gw", path, _http()), "RDX_PORTAL_GATEWAY_KEYS_FILE", reason)


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_keys_file_turned_bad_under_a_running_portal_keeps_the_keys_read_before(tmp_path, caplog, kind):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(GOOD))
    path.chmod(0o600)
    gateway = Gateway("http://gw", path, _http())
    path.unlink()
    _hostile(path, kind)
    caplog.set_level(logging.ERROR)
    assert within(10, lambda: gateway._token("bank", "analyst")) == "rdx_a.b"
    assert "RDX_PORTAL_GATEWAY_KEYS_FILE not reloaded" in caplog.text and CANARY not in caplog.text
    if kind != "directory":
        path.unlink()
    else:
        path.rmdir()
    path.write_text(json.dumps({"bank/analyst": "rdx_c.d"}))
    path.chmod(0o600)
    assert gateway._token("bank", "analyst") == "rdx_c.d"  # a good file again is read


def test_an_entry_is_named_by_its_position_not_its_text(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({**GOOD, CANARY: "rdx_x.y"}))
    path.chmod(0o600)
    with pytest.raises(KeysFileError) as err:
        load_keys(path)
    assert "entry 2 is not" in str(err.value) and CANARY not in str(err.value)
