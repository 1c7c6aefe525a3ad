"""The files a compute node's settings name, broken or hostile: RDX_NODE_KEY_FILE and RDX_DATASETS
(a JSON file, or a directory of them). The start stops at once with one line naming the setting
and what is wrong, never a hang, unbounded memory, a traceback or the file's bytes."""

from __future__ import annotations

import json

import pytest

from services.common.identity import Identity
from services.compute.app import _node_identity, build
from services.compute.settings import ComputeSettings
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, stops


def _settings(tmp_path, **changes) -> ComputeSettings:
    key = tmp_path / "node.key"
    if not key.exists():
        Identity.generate("m.node").save(key)
    return ComputeSettings(**{"member_id": "m", "node_key_file": key, "state_root": tmp_path / "state", **changes})


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_node_key_file_that_is_no_key_stops_the_start(tmp_path, kind):
    path = plant(tmp_path / "bad.key", kind)
    reason = {"huge": "larger than", "directory": "not a regular file", "fifo": "not a regular file",
              "dev-zero": "not a regular file"}.get(kind, "is not a key file")
    stops(lambda: _node_identity(_settings(tmp_path, node_key_file=path)), "RDX_NODE_KEY_FILE", reason)


def test_a_node_key_file_whose_account_is_not_an_account_id_is_not_named(tmp_path):
    path = tmp_path / "bad.key"
    key = Identity.generate("m.node")
    key.save(path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "account": CANARY + " " * 100}))
    stops(lambda: _node_identity(_settings(tmp_path, node_key_file=path)), "RDX_NODE_KEY_FILE", "not an account id")


def test_a_node_key_file_behind_a_link_is_followed(tmp_path):
    """A Kubernetes secret volume mounts each key as a link (node.key -> ..data/node.key)."""
    (tmp_path / "..data").mkdir()
    Identity.generate("m.node").save(tmp_path / "..data" / "node.key")
    (tmp_path / "link.key").symlink_to(tmp_path / "..data" / "node.key")
    assert _node_identity(_settings(tmp_path, node_key_file=tmp_path / "link.key")).account == "m.node"


@pytest.mark.parametrize("where", ["the file", "a file of the directory"])
@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_datasets_file_that_is_no_description_stops_the_start(tmp_path, kind, where):
    if where == "the file":
        path = plant(tmp_path / "datasets.json", kind)
    else:
        path = tmp_path / "datasets"
        path.mkdir()
        (path / "a.json").write_text('{"datasets": []}')
        plant(path / "b.json", kind)
    reason = {"huge": "larger than", "not utf-8": "not a readable JSON file", "deep nesting": "not a readable JSON file",
              "wrong types": "expected a dataset object"}.get(kind, "not a regular file")
    if kind == "directory" and where == "the file":
        reason = "does not exist"  # an empty directory of descriptions: none
        (path / "x.json").symlink_to(tmp_path / "missing.json")
    message = stops(lambda: build(_settings(tmp_path, datasets=path)), "RDX_DATASETS", reason)
    assert "RDX_DATASETS: RDX_DATASETS" not in message


def test_a_datasets_entry_of_wrong_types_is_named_by_field_not_value(tmp_path):
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps({"datasets": [{"id": CANARY + "!", "format": "csv", "path": 7}]}))
    message = stops(lambda: build(_settings(tmp_path, datasets=path)), "RDX_DATASETS", "invalid dataset entry")
    assert "id:" in message and "path:" in message


def test_a_datasets_file_linked_to_the_node_key_is_refused_without_the_secret(tmp_path):
    settings = _settings(tmp_path)
    (tmp_path / "datasets.json").symlink_to(settings.node_key_file)
    secret = json.loads(settings.node_key_file.read_text())["secret_key"]
    message = stops(lambda: build(settings.model_copy(update={"datasets": tmp_path / "datasets.json"})),
                    "RDX_DATASETS", "invalid dataset entry")
    assert secret not in message
