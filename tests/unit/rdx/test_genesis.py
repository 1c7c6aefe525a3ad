"""``rdx genesis``: a complete genesis from a small YAML file, deterministic, validated, and one
the app's InitChain accepts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import typer
import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from tendermint.abci import types_pb2 as abci
from tendermint.crypto.keys_pb2 import PublicKey
from typer.testing import CliRunner

from rdx import genesis as g
from rdx.governance_cli import install
from rdx.testnet import Testnet
from services.common.identity import Identity
from services.consensus.app import RdxApp
from services.consensus.state import Database, Overlay
from services.consensus.validators.keeper import address

cli_app = typer.Typer()
install(cli_app)


def spec(tmp_path: Path) -> dict:
    officer, gateway = Identity.generate("association"), Identity.generate("association.node")
    alice, bob, carol = (Identity.generate(f"association.board-{n}") for n in ("alice", "bob", "carol"))
    key_file = tmp_path / "node0" / "priv_validator_key.json"
    Testnet.new_validator_key(key_file)
    member = Identity.generate("acme")
    return {
        "chain_id": "rdx-test-net",
        "genesis_time": "2026-03-01T00:00:00Z",
        "validators": [{"name": "validator-0", "key_file": "node0/priv_validator_key.json"},
                       {"name": "validator-1", "pub_key": Identity.generate("v").public_key, "power": 20}],
        "association": {"id": "association", "name": "The Association", "public_key": officer.public_key,
                        "node": {"public_key": gateway.public_key, "endpoint": "gateway:8000"}},
        "board": {"threshold": 2, "seats": [{"name": n, "public_key": s.public_key}
                                            for n, s in (("alice", alice), ("bob", bob), ("carol", carol))],
                  "powers": {"members": "board"}},
        "members": [{"id": "acme", "name": "ACME", "roles": ["provider"], "public_key": member.public_key}],
        "balances": {"acme": 1_000},
        "params": {"association_fee_bps": 300},
    }


def write_spec(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "genesis.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_same_spec_gives_the_same_bytes_and_the_app_accepts_them(tmp_path):
    path = write_spec(tmp_path, spec(tmp_path))
    first = g.write(path, tmp_path / "a.json")
    g.write(path, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert first["genesis_time"] == "2026-03-01T00:00:00Z" and first["chain_id"] == "rdx-test-net"
    key0 = json.loads((tmp_path / "node0" / "priv_validator_key.json").read_text())["pub_key"]["value"]
    assert [(v["name"], v["pub_key"]["value"], v["power"]) for v in first["validators"]] == [
        ("validator-0", key0, "10"), ("validator-1", first["validators"][1]["pub_key"]["value"], "20")]
    assert first["validators"][0]["address"] == address(key0)
    assert first["consensus_params"]["block"]["max_bytes"] == str(4 << 20)
    # InitChain takes it: board, validators (with their names), members, balances, params
    db = Database(tmp_path / "chain.sqlite")
    app = RdxApp(db, "rdx-test-net")
    app.init_chain(abci.RequestInitChain(
        chain_id="rdx-test-net", app_state_bytes=json.dumps(first["app_state"]).encode(), time=Timestamp(seconds=1),
        validators=[abci.ValidatorUpdate(pub_key=PublicKey(ed25519=base64.b64decode(v["pub_key"]["value"])),
                                         power=int(v["power"])) for v in first["validators"]]))
    app.finalize_block(abci.RequestFinalizeBlock(height=1, time=Timestamp(seconds=2)))
    app.commit(abci.RequestCommit())
    state = Overlay(db)
    board = state.get("governance/board")
    assert board["threshold"] == 2 and board["seats"] == [f"association.board-{n}" for n in ("alice", "bob", "carol")]
    assert board["powers"]["members"] == "board" and board["powers"]["credits"] == "board"
    assert state.get(f"validators/set/{address(key0)}")["name"] == "validator-0"
    assert state.get("bank/balance/acme") == 1_000 and state.get("params")["association_fee_bps"] == 300
    assert state.get("accounts/association.node")["kind"] == "node"
    assert state.get("chain/signatures") == "zip215"  # tx signatures by ZIP-215 (services/consensus/signatures.py)


@pytest.mark.parametrize("change, message", [
    (lambda s: s["board"].update(threshold=4), "threshold 4 is more than the 3 seats"),
    (lambda s: s.pop("board"), "board: Field required"),
    (lambda s: s["validators"].append(dict(s["validators"][1], name="validator-2")), "same key"),
    (lambda s: s["validators"].append(dict(s["validators"][0])), "validator names must be unique"),
    (lambda s: s["validators"][1].update(pub_key="AAAA"), "32-byte Ed25519"),
    (lambda s: s["balances"].update(nobody=5), "balances for unknown members: nobody"),
    (lambda s: s["params"].update(no_such=1), "no_such"),
    (lambda s: s.update(genesis_time="2026-03-01T00:00:00"), "time zone"),
    (lambda s: s.update(policy="this is not cedar"), "policy"),
    (lambda s: s["board"].update(powers={"upgrade": "officer"}), "powers"),
    (lambda s: s["members"][0]["roles"].append("association"), "association role"),
    (lambda s: s.update(extra=1), "extra"),
    (lambda s: s.update(signatures="ed448"), "signatures"),
])
def test_a_spec_that_would_not_make_a_working_chain_is_refused(tmp_path, change, message):
    doc = spec(tmp_path)
    change(doc)
    with pytest.raises(g.GenesisError, match=message):
        g.build(g.load(write_spec(tmp_path, doc)), tmp_path)


def test_the_command_writes_checks_and_refuses(tmp_path):
    path = write_spec(tmp_path, spec(tmp_path))
    runner = CliRunner()
    result = runner.invoke(cli_app, ["genesis", str(path), "--out", str(tmp_path / "out" / "genesis.json")])
    assert result.exit_code == 0, result.output
    assert "2 validators (power 30), board 2 of 3, 1 founding members" in result.output
    assert json.loads((tmp_path / "out" / "genesis.json").read_text())["chain_id"] == "rdx-test-net"
    result = runner.invoke(cli_app, ["genesis", str(path), "--check"])
    assert result.exit_code == 0 and result.output.startswith("valid:")
    doc = spec(tmp_path)
    doc["board"]["threshold"] = 0
    result = runner.invoke(cli_app, ["genesis", str(write_spec(tmp_path, doc)), "--check"])
    assert result.exit_code == 2 and "threshold" in result.output


def test_keygen_writes_a_key_once_and_prints_only_the_public_key(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli_app, ["keygen", "association.board-alice", "--out", str(tmp_path / "alice.json")])
    assert result.exit_code == 0
    key = Identity.load(tmp_path / "alice.json")
    assert result.output.split() == ["association.board-alice", key.public_key]
    assert json.loads((tmp_path / "alice.json").read_text())["secret_key"] not in result.output
    assert oct((tmp_path / "alice.json").stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(cli_app, ["keygen", "association.board-alice", "--out", str(tmp_path / "alice.json")])
    assert again.exit_code == 2 and Identity.load(tmp_path / "alice.json").public_key == key.public_key


def test_local_specs_are_what_rdx_up_and_the_testnet_use(tmp_path):
    association = Identity.generate("association")
    app = g.local_app_spec(association)
    assert app["board"]["seats"] == [{"name": "local", "public_key": g.local_seat(association).public_key}]
    assert g.local_seat(association).public_key == g.local_seat(association).public_key  # derived, stable
    assert app["board"]["powers"] == g.ALL_OFFICER
    doc = g.build(g.parse(g.local_spec("rdx-local", [("node", Identity.generate("v").public_key)], app)))
    assert doc["app_state"]["association"]["roles"] == ["association"]
