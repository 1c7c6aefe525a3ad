"""The files the local supervisor reads from its state directory, broken or hostile:
``member-nodes.json`` (read again every half second while it runs) and ``rdx-state.json`` (read by
``rdx up``). A bad member-nodes file leaves the running nodes as they are and is logged; a bad
marker stops ``rdx up`` with one line. Never a hang, an unbounded read or the file's bytes."""

from __future__ import annotations

import json

import pytest

from rdx.supervisor import BadNodesFile, Exchange, check_state_dir, read_member_nodes
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
