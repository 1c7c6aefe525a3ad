"""The trust anchor of services/common/verified.py: a genesis's validators (in whatever order the
file lists them) give the validator-set hash of a real testnet's headers, and malformed anchors
are refused with VerificationError (the live reads are tests/integration/test_byzantine_rpc.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from services.common import lightclient
from services.common import service, verified
from services.common.chain import ChainClient
from services.common.verified import Anchor, TrustSettings, VerificationError, sorted_set
from tests.filekit import BROKEN, CANARY, NOT_REGULAR, plant, stops, within

pytestmark = pytest.mark.unit

VECTORS = json.loads((Path(__file__).with_name("lightclient_testnet_vectors.json")).read_text())
FIRST = VECTORS["blocks"][str(VECTORS["first"])]
GENESIS = {"chain_id": VECTORS["chain_id"], "initial_height": "1",
           "validators": [{"address": v["address"], "pub_key": v["pub_key"], "power": v["voting_power"], "name": f"v{i}"}
                          for i, v in enumerate(reversed(FIRST["validators"]["validators"]))]}


def test_a_genesis_anchor_names_the_validator_set_of_the_real_headers(tmp_path):
    header = lightclient.light_block(FIRST["commit"], FIRST["validators"]).header
    anchor = Anchor.from_genesis(GENESIS)
    assert (anchor.chain_id, anchor.height, len(anchor.validators)) == (VECTORS["chain_id"], 1, 4)
    assert lightclient.validators_hash(sorted_set(anchor.validators)) == header.validators_hash
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(GENESIS))
    assert Anchor.from_genesis(path) == anchor
    assert TrustSettings(trusted_genesis=path).anchor("ignored") == anchor
    assert TrustSettings(trusted_genesis=None, trusted_header=None).anchor("x") is None
    assert TrustSettings(trusted_genesis=None, trusted_header="4:" + "00" * 32).anchor("x").height == 4


def _edit(fn):
    doc = copy.deepcopy(GENESIS)
    fn(doc)
    return doc


@pytest.mark.parametrize("doc", [
    {}, [], {"chain_id": "x"}, {"chain_id": "x", "validators": []}, {"chain_id": "x", "validators": None},
    _edit(lambda d: d["validators"][0].update(address="00" * 20)),
    _edit(lambda d: d["validators"][0]["pub_key"].update(type="tendermint/PubKeySecp256k1")),
    _edit(lambda d: d["validators"][0]["pub_key"].update(value="short")),
    _edit(lambda d: d["validators"][0].update(power="-5")),
    _edit(lambda d: d["validators"][0].update(power="many")),
    _edit(lambda d: d.update(initial_height="one")),
    _edit(lambda d: d["validators"].append(7)),
])
def test_malformed_genesis_anchors_are_refused(doc, tmp_path):
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(VerificationError):
        Anchor.from_genesis(path)
    if isinstance(doc, dict):
        with pytest.raises(VerificationError):
            Anchor.from_genesis(doc)


def test_a_missing_or_unreadable_genesis_file_is_refused(tmp_path):
    for path in (tmp_path / "absent.json", tmp_path):
        with pytest.raises(VerificationError):
            Anchor.from_genesis(path)
    (tmp_path / "bad.json").write_bytes(b"\xff{")
    with pytest.raises(VerificationError):
        Anchor.from_genesis(tmp_path / "bad.json")


@pytest.mark.parametrize("kind", NOT_REGULAR + BROKEN)
def test_a_hostile_genesis_file_stops_the_start_with_one_line(tmp_path, monkeypatch, kind):
    """RDX_TRUSTED_GENESIS is read at every service's start: a FIFO there held the start for a
    writer and /dev/zero filled its memory (before 2026-12-03); now the start ends at once with
    one line naming the setting, never the file's bytes."""
    path = plant(tmp_path / "genesis.json", kind)
    monkeypatch.setenv("RDX_TRUSTED_GENESIS", str(path))
    chain = ChainClient("http://127.0.0.1:9", VECTORS["chain_id"])  # never asked: the anchor is refused first
    reason = {"huge": "larger than 64 MiB"}.get(kind, "not a regular file" if kind in NOT_REGULAR
                                                 else "not a CometBFT genesis with validators")

    def start():
        service.main(lambda: verified.from_env(chain))
    stops(start, "rdx: RDX_TRUSTED_GENESIS", reason)


def test_another_chains_genesis_or_a_malformed_header_is_refused_naming_its_setting(tmp_path, monkeypatch):
    """An empty RDX_TRUSTED_GENESIS means unset, so the header setting is the one read then."""
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(GENESIS))
    monkeypatch.setenv("RDX_TRUSTED_GENESIS", str(path))
    with pytest.raises(verified.TrustAnchorRefused, match="RDX_TRUSTED_GENESIS: the trusted genesis is of chain"):
        within(10, lambda: verified.from_env(ChainClient("http://127.0.0.1:9", "another-chain")))
    monkeypatch.setenv("RDX_TRUSTED_GENESIS", "")
    monkeypatch.setenv("RDX_TRUSTED_HEADER", "7:" + CANARY)
    with pytest.raises(verified.TrustAnchorRefused, match="^RDX_TRUSTED_HEADER: a trusted header is"):
        verified.from_env(ChainClient("http://127.0.0.1:9", "c"))


@pytest.mark.parametrize("text", ["", "12", "12:", ":" + "ab" * 32, "x:" + "ab" * 32, "0:" + "ab" * 32,
                                  "-3:" + "ab" * 32, "5:" + "ab" * 31, "5:" + "zz" * 32, "5:" + "ab" * 33])
def test_malformed_trusted_headers_are_refused(text):
    with pytest.raises(VerificationError):
        Anchor.from_header("c", text)


def test_a_trusted_header_anchor():
    anchor = Anchor.from_header("c", "7:" + "AB" * 32)
    assert (anchor.height, anchor.header_hash) == (7, b"\xab" * 32)
