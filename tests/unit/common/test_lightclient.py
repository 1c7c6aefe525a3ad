"""The light client (services/common/lightclient.py) on headers, commits and validator sets
recorded from a real 4-validator CometBFT testnet (record_lightclient_vectors.py), and tampered
copies of them."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.common import lightclient, proofs
from services.common.identity import Identity
from services.common.lightclient import LightClientError

pytestmark = pytest.mark.unit

VECTORS = json.loads((Path(__file__).with_name("lightclient_testnet_vectors.json")).read_text())
RAW = {int(h): (b["commit"], b["validators"]) for h, b in VECTORS["blocks"].items()}
CHAIN = VECTORS["chain_id"]
FIRST, ABSENT = VECTORS["first"], VECTORS["absent"]
BLOCKS = {h: lightclient.light_block(*pair) for h, pair in RAW.items()}
NOW = datetime.fromtimestamp(BLOCKS[max(BLOCKS)].time_ns / 1e9, timezone.utc) + timedelta(minutes=1)
DAY = 86_400


def edited(height: int, edit) -> lightclient.LightBlock:
    commit, validators = copy.deepcopy(RAW[height])
    edit(commit["signed_header"]["header"], commit["signed_header"]["commit"], validators["validators"])
    return lightclient.light_block(commit, validators)


def test_every_recorded_block_verifies_and_the_network_had_four_validators():
    for block in BLOCKS.values():
        lightclient.verify_signed_header(block, CHAIN)
        assert len(block.validators) == 4
    flags = [s.block_id_flag for s in BLOCKS[ABSENT].commit.signatures]
    assert flags.count(lightclient.FLAG_ABSENT) == 1  # a stopped validator; 3 of 4 is still more than 2/3


@pytest.mark.parametrize("to", sorted(set(RAW) - {FIRST}))
def test_adjacent_and_skipping_verification_from_a_trusted_header(to):
    lightclient.verify(BLOCKS[FIRST], BLOCKS[to], now=NOW, trusting_period_s=DAY)


def test_a_query_is_proven_by_the_verified_header_after_its_height():
    answer = VECTORS["query"]["answer"]
    height = int(answer["response"]["height"])
    block = BLOCKS[height + 1]
    lightclient.verify(BLOCKS[FIRST], block, now=NOW, trusting_period_s=DAY)
    value = lightclient.verify_query(block, VECTORS["query"]["key"], answer)
    assert json.loads(value)["status"] == "active"
    other = next(b for h, b in BLOCKS.items() if h != height + 1)
    with pytest.raises(proofs.ProofError):
        lightclient.verify_query(other, VECTORS["query"]["key"], answer)
    rewritten = copy.deepcopy(answer)
    rewritten["response"]["value"] = base64.b64encode(value.replace(b"active", b"suspnd")).decode()
    with pytest.raises(proofs.ProofError):
        lightclient.verify_query(block, VECTORS["query"]["key"], rewritten)


def _field(name, value):
    def edit(header, commit, validators):
        header[name] = value
    return edit


def _signature(header, commit, validators):
    signed = next(s for s in commit["signatures"] if s["block_id_flag"] == 2)
    sig = base64.b64decode(signed["signature"])
    signed["signature"] = base64.b64encode(sig[:-1] + bytes([sig[-1] ^ 1])).decode()


def _two_absent(header, commit, validators):
    for sig in commit["signatures"][:2]:
        sig["block_id_flag"] = 1


def _nil_votes(header, commit, validators):
    for sig in commit["signatures"][:2]:
        sig["block_id_flag"] = 3


def _power(header, commit, validators):
    validators[0]["voting_power"] = "1000"


def _order(header, commit, validators):
    validators.reverse()


def _impostor(header, commit, validators):
    key = Identity.generate("impostor").public_key
    validators[0]["pub_key"]["value"] = key
    validators[0]["address"] = hashlib.sha256(base64.b64decode(key)).hexdigest()[:40].upper()


def _block_id(header, commit, validators):
    commit["block_id"]["hash"] = "00" * 32


def _commit_height(header, commit, validators):
    commit["height"] = str(int(commit["height"]) + 1)


def _round(header, commit, validators):
    commit["round"] = 1


def _timestamp(header, commit, validators):
    signed = next(s for s in commit["signatures"] if s["block_id_flag"] == 2)
    signed["timestamp"] = "2026-01-01T00:00:00.5Z"  # not the time it signed


@pytest.mark.parametrize("edit", [
    _field("app_hash", "00" * 32), _field("height", "999"), _field("chain_id", "other-chain"),
    _field("validators_hash", "00" * 32), _field("proposer_address", "00" * 20),
    _field("time", "2030-01-01T00:00:00Z"), _field("last_results_hash", "11" * 32),
    _signature, _two_absent, _nil_votes, _power, _order, _impostor, _block_id, _commit_height, _round, _timestamp,
], ids=lambda e: getattr(e, "__name__", "field"))
def test_tampered_copies_are_refused(edit):
    adjacent = FIRST + 1
    with pytest.raises(LightClientError):
        lightclient.verify(BLOCKS[FIRST], edited(adjacent, edit), now=NOW, trusting_period_s=DAY)


def test_trust_rules():
    trusted, later = BLOCKS[FIRST], BLOCKS[max(BLOCKS)]
    with pytest.raises(LightClientError, match="trusting period"):
        lightclient.verify(trusted, later, now=NOW + timedelta(days=2), trusting_period_s=DAY)
    with pytest.raises(LightClientError, match="future"):
        lightclient.verify(trusted, later, now=NOW - timedelta(hours=1), trusting_period_s=DAY)
    with pytest.raises(LightClientError, match="not after"):
        lightclient.verify(later, trusted, now=NOW, trusting_period_s=DAY)
    # skipping from a set that did not sign: none of its power is in the new commit
    strangers = edited(FIRST, _impostor)
    others = lightclient.LightBlock(trusted.header, trusted.commit, strangers.validators[:1])
    with pytest.raises(LightClientError, match="1/3"):
        lightclient.verify(others, later, now=NOW, trusting_period_s=DAY)
    # adjacent: the next header must be signed by the set the trusted one named next
    renamed = copy.deepcopy(trusted.header)
    renamed.next_validators_hash = bytes(32)
    with pytest.raises(LightClientError, match="named next"):
        lightclient.verify(lightclient.LightBlock(renamed, trusted.commit, trusted.validators), BLOCKS[FIRST + 1],
                           now=NOW, trusting_period_s=DAY)


@pytest.mark.parametrize("commit, validators", [
    ({}, {}), (None, None), ({"signed_header": []}, {"validators": []}), ("x", "y"),
    ({"signed_header": {"header": {}, "commit": {}}}, {"validators": []}),
])
def test_malformed_rpc_answers_are_refused(commit, validators):
    with pytest.raises(LightClientError):
        lightclient.light_block(commit, validators)


@pytest.mark.parametrize("edit", [
    _field("time", "yesterday"), _field("time", 5), _field("app_hash", "zz"), _field("app_hash", "0" * 1000),
    _field("height", "ten"), _field("version", None),
    lambda h, c, v: v[0]["pub_key"].update(type="tendermint/PubKeySecp256k1"),
    lambda h, c, v: v[0].update(voting_power="-1"), lambda h, c, v: v[0].update(address="00" * 20),
    lambda h, c, v: c["signatures"][0].update(block_id_flag=7), lambda h, c, v: c["signatures"][0].update(signature="%%"),
    lambda h, c, v: v.extend([v[0]] * 10_001),
])
def test_malformed_fields_are_refused(edit):
    with pytest.raises(LightClientError):
        edited(FIRST, edit)


def _signed_by(keys, sign) -> lightclient.LightBlock:
    """Block FIRST + 1 as if ``keys`` were its validators (10 each), its header and commit made to
    match, every vote signed by ``sign(key, sign_bytes)``."""
    commit, validators = copy.deepcopy(RAW[FIRST + 1])
    header, signed = commit["signed_header"]["header"], commit["signed_header"]["commit"]
    addresses = [hashlib.sha256(bytes(k.verify_key)).hexdigest()[:40].upper() for k in keys]
    validators["validators"] = [{"address": a, "pub_key": {"type": "tendermint/PubKeyEd25519",
                                 "value": base64.b64encode(bytes(k.verify_key)).decode()},
                                 "voting_power": "10", "proposer_priority": "0"} for a, k in zip(addresses, keys)]
    signed["signatures"] = [{"block_id_flag": 2, "validator_address": a, "timestamp": header["time"],
                             "signature": base64.b64encode(bytes(64)).decode()} for a in addresses]
    block = lightclient.light_block(commit, validators)
    header["validators_hash"] = lightclient.validators_hash(block.validators).hex().upper()
    block = lightclient.light_block(commit, validators)
    signed["block_id"]["hash"] = lightclient.header_hash(block.header).hex().upper()
    block = lightclient.light_block(commit, validators)
    for sig, parsed, key in zip(signed["signatures"], block.commit.signatures, keys):
        sig["signature"] = base64.b64encode(sign(key, lightclient.vote_sign_bytes(CHAIN, block.commit, parsed))).decode()
    return lightclient.light_block(commit, validators)


def test_a_vote_cometbft_accepts_by_zip215_is_accepted_here_too():
    """A validator's vote whose R carries a small-order component: CometBFT counts it (ZIP-215),
    libsodium would refuse it. Refusing it made one validator able to stop every light client."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import SigningKey
    from torsion import sign_with_torsion

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    honest = _signed_by(keys, lambda key, message: key.sign(message).signature)
    lightclient.verify_signed_header(honest, CHAIN)  # the construction is sound
    odd = _signed_by(keys, lambda key, message: sign_with_torsion(key, message) if key is keys[0]
                     else key.sign(message).signature)
    lightclient.verify_signed_header(odd, CHAIN)
    sig = odd.commit.signatures[0]
    with pytest.raises(BadSignatureError):  # what the light client checked before
        keys[0].verify_key.verify(lightclient.vote_sign_bytes(CHAIN, odd.commit, sig), sig.signature)
    forged = _signed_by(keys, lambda key, message: bytes(64) if key is keys[0] else key.sign(message).signature)
    with pytest.raises(LightClientError, match="bad signature"):
        lightclient.verify_signed_header(forged, CHAIN)


@pytest.mark.parametrize("bad", [b"", bytes(63), bytes(65), b"\xff" * 64], ids=["empty", "63 bytes", "65 bytes", "ones"])
def test_a_vote_signature_of_the_wrong_length_or_bytes_is_refused(bad):
    from nacl.signing import SigningKey

    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    block = _signed_by(keys, lambda key, message: bad if key is keys[1] else key.sign(message).signature)
    with pytest.raises(LightClientError):
        lightclient.verify_signed_header(block, CHAIN)
