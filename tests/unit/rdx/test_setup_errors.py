"""Bad setup gets a clear message naming what to do, not a stack trace."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from rdx import toolchain
from rdx.components import CometNode, KafkaBroker, ensure_port_free
from rdx.supervisor import check_state_dir
from rdx.toolchain import SetupError


@pytest.fixture
def empty_path(tmp_path, monkeypatch):
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    monkeypatch.setenv("RDX_CACHE", str(tmp_path / "cache"))
    return bare


def _link(bin_dir: Path, tool: str) -> None:
    real = next(Path(p) / tool for p in os.defpath.split(":") + ["/usr/local/go/bin", "/usr/bin"]
                if (Path(p) / tool).exists())
    (bin_dir / tool).symlink_to(real)


def test_missing_java_is_named(empty_path):
    with pytest.raises(SetupError, match=r"`java` was not found on PATH; it is needed to run Apache Kafka"):
        toolchain.ensure_kafka()


def test_missing_maven_is_named(empty_path):
    _link(empty_path, "java")
    with pytest.raises(SetupError, match=r"`mvn` was not found.*Install Maven"):
        toolchain.ensure_kafka()


def test_missing_go_is_named(empty_path):
    with pytest.raises(SetupError, match=r"`go` was not found on PATH; it is needed to build CometBFT"):
        toolchain.ensure_cometbft()


def test_port_taken_names_the_port_and_owner():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SetupError, match=rf"port {port} on 127.0.0.1, wanted by Kafka, is already in use"):
            ensure_port_free(port, "Kafka")


def test_state_dir_of_something_else_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("not rdx")
    with pytest.raises(SetupError, match="not an rdx state directory"):
        check_state_dir(tmp_path)


def test_corrupt_state_marker_is_refused(tmp_path):
    (tmp_path / "rdx-state.json").write_text("{garbage")
    with pytest.raises(SetupError, match="rdx-state.json is corrupt"):
        check_state_dir(tmp_path)


def test_kafka_data_without_metadata_is_refused(tmp_path):
    data = tmp_path / "kafka" / "data"
    data.mkdir(parents=True)
    (data / "some-topic-0").mkdir()
    broker = KafkaBroker(tmp_path / "kafka", toolchain.Toolchain(Path("/nonexistent"), Path("/x"), Path("/x")))
    with pytest.raises(SetupError, match="Kafka's data directory .* is corrupt"):
        broker.prepare()


def test_corrupt_cometbft_genesis_is_refused(tmp_path):
    config = tmp_path / "node" / "config"
    config.mkdir(parents=True)
    for name in ("priv_validator_key.json", "node_key.json"):
        (config / name).write_text(json.dumps({}))
    (config / "config.toml").write_text("")
    (config / "genesis.json").write_text('{"chain_id": ')
    node = CometNode(tmp_path / "node", toolchain.Toolchain(Path("/x"), Path("/x"), Path("/x")))
    with pytest.raises(SetupError, match=r"CometBFT's state in .* is corrupt \(genesis.json"):
        node.prepare()
