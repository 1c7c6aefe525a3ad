"""``member-nodes.json``: what the local supervisor accepts as members' compute nodes to run.
Hostile or broken files are refused with a reason and never start anything."""

from __future__ import annotations

import json

import pytest

from rdx.supervisor import BadNodesFile, NodeSpec, read_member_nodes, write_member_nodes


@pytest.fixture
def state(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "bank.node.json").write_text("{}")
    (tmp_path / "demo" / "bank").mkdir(parents=True)
    (tmp_path / "demo" / "bank" / "datasets.json").write_text("{}")
    return tmp_path


def spec(**changes) -> dict:
    return {"member": "bank", "http_port": 41001, "grpc_port": 41002, "key_file": "keys/bank.node.json",
            "datasets": "demo/bank/datasets.json", **changes}


def write(state, body) -> None:
    (state / "member-nodes.json").write_text(body if isinstance(body, str) else json.dumps(body))


def test_written_nodes_are_read_back(state):
    assert read_member_nodes(state) == {}
    write_member_nodes(state, [NodeSpec(**spec())])
    nodes = read_member_nodes(state)
    assert list(nodes) == ["bank"] and nodes["bank"].grpc_port == 41002 and nodes["bank"].workers == 1
    assert not list(state.glob(".member-nodes*"))  # written atomically, nothing left behind


@pytest.mark.parametrize("body, reason", [
    ("{", "file"),
    ("[]", "file"),
    ({"nodes": "bank"}, "nodes"),
    ({"nodes": [spec(member="Bank!")]}, "member"),
    ({"nodes": [spec(http_port=80)]}, "http_port"),
    ({"nodes": [spec(grpc_port=70000)]}, "grpc_port"),
    ({"nodes": [spec(workers=1000)]}, "workers"),
    ({"nodes": [spec(log_level="TRACE")]}, "log_level"),
    ({"nodes": [spec(env={"RDX_KAFKA_BOOTSTRAP": "evil:9092"})]}, "env"),
    ({"nodes": [spec(key_file="../../etc/passwd")]}, "key_file is not a file in the state directory"),
    ({"nodes": [spec(key_file="/etc/passwd")]}, "key_file is not a file in the state directory"),
    ({"nodes": [spec(datasets="demo/bank/missing.json")]}, "datasets is not a file in the state directory"),
    ({"nodes": [spec(), spec()]}, "named twice"),
    ({"nodes": [spec(), spec(member="telco", http_port=41002, grpc_port=41003,
                             key_file="keys/bank.node.json")]}, "same port"),
    ({"nodes": [spec(member=f"m{i}", http_port=42000 + 2 * i, grpc_port=42001 + 2 * i) for i in range(17)]}, "nodes"),
    ("x" * (2 << 20), "larger than 1 MiB"),
])
def test_a_bad_file_is_refused_with_its_reason(state, body, reason):
    write(state, body)
    with pytest.raises(BadNodesFile) as exc:
        read_member_nodes(state)
    assert reason in str(exc.value)
    assert "passwd" not in str(exc.value) and "evil" not in str(exc.value)  # the content is not echoed
