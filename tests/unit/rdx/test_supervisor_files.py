"""The files the local supervisor reads from its state directory, broken or hostile:
``member-nodes.json`` (read again every half second while it runs) and ``rdx-state.json`` (read by
``rdx up``). A bad member-nodes file leaves the running nodes as they are and is logged; a bad
marker stops ``rdx up`` with one line. Never a hang, an unbounded read or the file's bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rdx.supervisor import (BadNodesFile, Exchange, admin_token, check_state_dir, endpoints_text, leftover_processes,
                            local_identity, read_member_nodes, status, supervisor_pid, write_member_nodes)
from services.common.identity import Identity
from rdx.toolchain import SetupError
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, within

REASONS = {"huge": "larger than 1 MiB", "fifo": "not a regular file", "directory": "not a regular file",
           "dev-zero": "not a regular file", "not utf-8": "Invalid JSON", "deep nesting": "Invalid JSON",
           "wrong types": "nodes"}


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_member_nodes_file_that_is_no_description_is_refused_at_once(tmp_path, kind):
    plant(tmp_path / "member-nodes.json", kind)
    with pytest.raises(BadNodesFile) as err:
        within(10, lambda: read_member_nodes(tmp_path))
    assert REASONS[kind] in str(err.value) and CANARY not in str(err.value), str(err.value)


class _Running:
    """A member's node the supervisor runs (only what sync_member_nodes asks of it)."""

    def __init__(self):
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_member_nodes_file_turned_bad_while_running_leaves_the_nodes_running(tmp_path, kind):
    exchange = Exchange.__new__(Exchange)  # its state only: no Kafka, no chain
    said: list[str] = []
    node = _Running()
    exchange.state, exchange.log, exchange._nodes_seen = tmp_path, said.append, None
    exchange.nodes = {"bank": (object(), node)}
    plant(tmp_path / "member-nodes.json", kind)
    assert within(10, exchange.sync_member_nodes) is False
    assert list(exchange.nodes) == ["bank"] and not node.stopped
    assert len(said) == 1 and said[0].startswith("rdx: member nodes unchanged: ") and REASONS[kind] in said[0]
    assert CANARY not in said[0]


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN + ("a version that is text",))
def test_a_bad_state_marker_stops_rdx_up_with_one_line(tmp_path, kind):
    marker = tmp_path / "rdx-state.json"
    if kind == "a version that is text":
        marker.write_text(json.dumps({"version": CANARY}))
    else:
        plant(marker, kind)
    with pytest.raises(SetupError) as err:
        within(10, lambda: check_state_dir(tmp_path))
    message = str(err.value)
    assert "rdx-state.json" in message and CANARY not in message and "\n" not in message
    reason = {"huge": "larger than 4 KiB", "deep nesting": "larger than 4 KiB"}.get(  # the marker is 16 bytes
        kind, "not a regular file" if kind in NOT_REGULAR else "corrupt")
    assert reason in message, message


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_the_supervisors_own_state_files_broken_are_refused_or_passed_over_at_once(tmp_path, kind):
    """keys/<account>.json and admin.token (rdx up), endpoints.json (rdx status, rdx up --detach),
    supervisor.pid and pids.json (rdx up, rdx down)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("association.json", "admin.token", "../endpoints.json", "../supervisor.pid", "../pids.json"):
        plant(keys / name, kind)
    calls = [lambda: local_identity(keys, "association"), lambda: status(tmp_path), lambda: endpoints_text(tmp_path)]
    if kind != "wrong types":  # any short ASCII text is a token
        calls.append(lambda: admin_token(keys))
    for call in calls:
        with pytest.raises(SetupError) as err:
            within(10, call)
        assert CANARY not in str(err.value) and "\n" not in str(err.value)
    assert within(10, lambda: supervisor_pid(tmp_path)) is None
    assert within(10, lambda: leftover_processes(tmp_path)) == []


def test_a_local_key_of_another_account_is_refused(tmp_path):
    Identity.generate("association.node").save(tmp_path / "association.json")
    with pytest.raises(SetupError, match="is the key of association.node, not of association"):
        local_identity(tmp_path, "association")


@pytest.mark.parametrize("text", ["-1", "0", "1", "9" * 30, "12ab"])
def test_a_supervisor_pid_file_naming_no_process_of_ours_is_no_supervisor(tmp_path, text):
    """-1 or 0 would pass the signal-0 check, and `rdx down` would then SIGTERM every process it may
    signal, or its own process group."""
    (tmp_path / "supervisor.pid").write_text(text)
    assert supervisor_pid(tmp_path) is None


def test_a_supervisor_pid_file_is_believed_only_for_the_process_it_was_written_for(tmp_path):
    """A pid names another program once it is reused (a killed supervisor, a reboot): `rdx down`
    would SIGTERM it. The file names the pid and its start time; a live process with that pid and
    another start time, or a file with the pid alone, is no supervisor."""
    me = os.getpid()
    started = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19]
    for text, found in ((f"{me} {started}", me), (f"{me} {started}\n", me), (f"{me} {int(started) + 1}", None),
                        (str(me), None), (f"{me} {started} 7", None), (f"{me} x", None)):
        (tmp_path / "supervisor.pid").write_text(text)
        assert supervisor_pid(tmp_path) == found, text


@pytest.mark.parametrize("where", ["member-nodes.json", ".member-nodes.json.tmp"])
def test_a_fifo_where_the_supervisor_writes_is_replaced_not_waited_on(tmp_path, where):
    """The same write serves endpoints.json, pids.json and supervisor.pid."""
    plant(tmp_path / where, "fifo")
    within(10, lambda: write_member_nodes(tmp_path, []))
    assert json.loads((tmp_path / "member-nodes.json").read_text()) == {"nodes": []}
    assert not (tmp_path / ".member-nodes.json.tmp").exists()
