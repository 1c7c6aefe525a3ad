"""``rdx genesis``: a complete CometBFT genesis for an rdx chain from a small YAML file.

The one way rdx makes a genesis: ``rdx up``, the local testnet, the test harness, docker/ and
infra/ all go through :func:`build`. The output is a function of the file alone (the same YAML
gives the same bytes), and it is checked with the consensus app's own genesis parser, so a
genesis that this command writes is one the app's InitChain accepts.

A spec (``docs/operations.md`` walks through one)::

    chain_id: rdx-mainnet
    genesis_time: "2026-03-01T00:00:00Z"
    validators:                           # CometBFT's genesis validators
      - {name: validator-0, key_file: net/node0/config/priv_validator_key.json}   # only its public key is read
      - {name: validator-1, pub_key: "base64 Ed25519", power: 10}
    association:
      id: association
      name: Regional Data Exchange Association
      public_key: "base64"                # the officer key (day-to-day operations)
      node: {public_key: "base64", endpoint: "gateway:8000"}   # optional: the gateway's key (audit anchors)
    board:                                # k of n seat keys; the association's powers that need it
      threshold: 2
      seats: [{name: alice, public_key: "..."}, {name: bob, public_key: "..."}, {name: carol, public_key: "..."}]
      powers: {members: officer}          # optional: which powers the officer holds (defaults: powers.py)
    members: []                           # founding members, as members.Register payloads
    balances: {}                          # member id -> credits
    params: {}                            # chain parameters that differ from the defaults
    policy_file: policy.cedar             # optional; the built-in default policy otherwise

Relative paths are relative to the YAML file.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from nacl.signing import SigningKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rdx.components import MAX_BLOCK_BYTES
from services.common.identity import Identity
from services.common.policy import Policy, PolicyError
from services.consensus.app import Genesis
from services.consensus.governance.messages import ConfigureBoard
from services.consensus.governance.powers import DEFAULT_POWERS
from services.consensus.members.messages import Register, _ed25519_key
from services.consensus.params import Params
from services.consensus.validators.messages import MAX_POWER
from services.consensus.validators.keeper import MAX_VALIDATORS, address

ALL_OFFICER = {power: "officer" for power in DEFAULT_POWERS}
"""Powers of a local exchange's board: its one operator holds every key, so the officer key may do
everything but reconfigure the board and schedule upgrades."""


class GenesisError(ValueError):
    """The spec is not a valid rdx genesis; the message says what and where."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidatorSpec(_Spec):
    name: str = Field(min_length=1, max_length=64)
    pub_key: str | None = None
    key_file: Path | None = None
    power: int = Field(10, ge=1, le=MAX_POWER)

    @field_validator("pub_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else _ed25519_key(value)

    @model_validator(mode="after")
    def _one_key(self) -> "ValidatorSpec":
        if (self.pub_key is None) == (self.key_file is None):
            raise ValueError("give exactly one of pub_key and key_file")
        return self


class AssociationSpec(Register):
    """The association as InitChain admits it; ``node`` is its gateway's key (audit anchors)."""

    roles: list[Literal["association"]] = ["association"]


class ConsensusSpec(_Spec):
    max_block_bytes: int = Field(MAX_BLOCK_BYTES, ge=64 << 10, le=100 << 20)


class GenesisSpec(_Spec):
    chain_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,49}$")
    genesis_time: datetime
    initial_height: int = Field(1, ge=1)
    validators: list[ValidatorSpec] = Field(min_length=1, max_length=MAX_VALIDATORS)
    association: AssociationSpec
    board: ConfigureBoard
    members: list[Register] = []
    balances: dict[str, int] = {}
    params: dict[str, int] = {}
    policy: str | None = None
    policy_file: Path | None = None
    consensus: ConsensusSpec = ConsensusSpec()
    # The app hash is the root of the state tree (services/consensus/merkle.py); False gives the
    # hash chain of write sets of chains made before it (they migrate at an upgrade).
    state_tree: bool = True
    # How tx signatures are verified (services/consensus/signatures.py): ZIP-215, batched; libsodium is
    # the rule of chains made before it (they switch at an upgrade).
    signatures: Literal["libsodium", "zip215"] = "zip215"

    @field_validator("genesis_time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-03-01T00:00:00Z)")
        return value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _consistent(self) -> "GenesisSpec":
        names = [v.name for v in self.validators]
        if len(set(names)) != len(names):
            raise ValueError("validator names must be unique")
        ids = [self.association.id] + [m.id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError("member ids (the association's included) must be unique")
        if any("association" in m.roles for m in self.members):
            raise ValueError("only the association has the association role")
        unknown = sorted(set(self.balances) - set(ids))
        if unknown:
            raise ValueError(f"balances for unknown members: {', '.join(unknown)}")
        if any(amount <= 0 for amount in self.balances.values()):
            raise ValueError("balances must be positive")
        if self.policy is not None and self.policy_file is not None:
            raise ValueError("give policy or policy_file, not both")
        return self


def _timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with nanoseconds trimmed, as CometBFT writes it."""
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def read_key_file(path: Path) -> str:
    """The public key (base64) in a CometBFT priv_validator_key.json."""
    try:
        doc = json.loads(path.read_text())
        key = doc["pub_key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GenesisError(f"{path}: not a readable priv_validator_key.json ({type(exc).__name__})") from None
    if not isinstance(key, dict) or key.get("type") != "tendermint/PubKeyEd25519":
        raise GenesisError(f"{path}: only Ed25519 validator keys are supported")
    try:
        return _ed25519_key(key["value"])
    except ValueError as exc:
        raise GenesisError(f"{path}: {exc}") from None


def load(path: Path, validator_key_file: Path | None = None) -> GenesisSpec:
    """The spec at ``path``; with ``validator_key_file`` (a priv_validator_key.json), that key is the
    one validator whatever the spec lists (a one-validator dev chain's node makes its key first)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GenesisError(f"{path}: {exc}") from None
    if validator_key_file is not None and isinstance(raw, dict):
        raw["validators"] = [{"name": "validator-0", "pub_key": read_key_file(validator_key_file)}]
    return parse(raw)


def parse(raw: Any) -> GenesisSpec:
    try:
        return GenesisSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()[:8])
        raise GenesisError(f"invalid genesis spec: {problems}") from None


def build(spec: GenesisSpec, base: Path = Path(".")) -> dict[str, Any]:
    """The genesis document for ``spec``; key and policy files are read relative to ``base``."""
    validators = []
    for v in spec.validators:
        pub_key = v.pub_key if v.pub_key is not None else read_key_file(base / v.key_file)
        validators.append((v.name, pub_key, v.power))
    keys = [k for _, k, _ in validators]
    if len(set(keys)) != len(keys):
        raise GenesisError("two validators have the same key")
    if spec.policy_file is not None:
        try:
            policy = (base / spec.policy_file).read_text()
        except OSError as exc:
            raise GenesisError(f"policy_file: {exc}") from None
    else:
        policy = spec.policy
    app_state: dict[str, Any] = {
        "association": spec.association.model_dump(exclude_none=True),
        "board": spec.board.model_dump(exclude_none=True),
        "validator_names": {k: name for name, k, _ in validators},
    }
    if spec.state_tree:
        app_state["state_tree"] = True
    if spec.signatures != "libsodium":
        app_state["signatures"] = spec.signatures
    if spec.members:
        app_state["members"] = [m.model_dump(exclude_none=True) for m in spec.members]
    if spec.balances:
        app_state["balances"] = dict(sorted(spec.balances.items()))
    if spec.params:
        try:
            Params.model_validate(spec.params)
        except ValidationError as exc:
            raise GenesisError(f"params: {'; '.join(e['loc'][0] + ': ' + e['msg'] for e in exc.errors()[:5])}") from None
        app_state["params"] = dict(sorted(spec.params.items()))
    if policy is not None:
        try:
            Policy(policy, 1)
        except PolicyError as exc:
            raise GenesisError(f"policy: {exc}") from None
        app_state["policy"] = policy
    try:
        Genesis.model_validate(app_state)  # what InitChain parses
    except ValidationError as exc:
        raise GenesisError(f"app_state: {exc.errors()[0]['msg']}") from None
    return {
        "genesis_time": _timestamp(spec.genesis_time),
        "chain_id": spec.chain_id,
        "initial_height": str(spec.initial_height),
        "consensus_params": {
            "block": {"max_bytes": str(spec.consensus.max_block_bytes), "max_gas": "-1"},
            "evidence": {"max_age_num_blocks": "100000", "max_age_duration": "172800000000000", "max_bytes": "1048576"},
            "validator": {"pub_key_types": ["ed25519"]},
            "version": {"app": "0"},
            "abci": {"vote_extensions_enable_height": "0"},
        },
        "validators": [{"address": address(k), "pub_key": {"type": "tendermint/PubKeyEd25519", "value": k},
                        "power": str(power), "name": name} for name, k, power in validators],
        "app_hash": "",
        "app_state": app_state,
    }


def encode(genesis: dict[str, Any]) -> str:
    return json.dumps(genesis, indent=2) + "\n"


def write(spec_path: Path, out: Path) -> dict[str, Any]:
    """Read the YAML at ``spec_path``, write the genesis to ``out``; returns the genesis."""
    genesis = build(load(spec_path), spec_path.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(encode(genesis))
    return genesis


def digest(genesis: dict[str, Any]) -> str:
    return hashlib.sha256(encode(genesis).encode()).hexdigest()


# -- the specs rdx makes for local chains ----------------------------------------------------------------
def now() -> str:
    return _timestamp(datetime.now(timezone.utc))


def local_seat(association: Identity) -> Identity:
    """The one board seat of a local chain made without a board: its key is derived from the
    association's (a local exchange has one operator, who holds both). Never for a shared chain."""
    secret = hashlib.sha256(b"rdx local board seat\x00" + bytes(association.signing_key)).digest()
    return Identity(f"{association.account}.board-local", SigningKey(secret))


def local_app_spec(association: Identity, *, gateway: Identity | None = None, board: list[Identity] | None = None,
                   threshold: int = 1, powers: dict[str, str] | None = None,
                   params: dict | None = None) -> dict[str, Any]:
    """The rdx part of the spec of a chain on this machine (no chain id, time or validators).
    ``board``: seat identities (accounts ``<association>.board-<name>``), by default one seat
    (``local_seat``); ``powers`` default to the officer holding every power it may (``ALL_OFFICER``)."""
    seats = board if board is not None else [local_seat(association)]
    spec: dict[str, Any] = {
        "association": {"id": association.account, "name": "Regional Data Exchange Association",
                        "roles": ["association"], "public_key": association.public_key},
        "board": {"threshold": threshold,
                  "seats": [{"name": seat_name(association.account, s), "public_key": s.public_key} for s in seats],
                  "powers": dict(ALL_OFFICER if powers is None else powers)},
        "state_tree": True,
        "signatures": "zip215",
    }
    if gateway is not None:
        spec["association"]["node"] = {"public_key": gateway.public_key, "endpoint": "127.0.0.1:8000"}
    if params:
        spec["params"] = dict(params)
    return spec


def local_spec(chain_id: str, validators: list[tuple[str, str]], app: dict[str, Any],
               genesis_time: datetime | None = None) -> dict[str, Any]:
    """A whole spec: ``validators`` are (name, public key), ``app`` is from ``local_app_spec``."""
    return {"chain_id": chain_id,
            "genesis_time": now() if genesis_time is None else _timestamp(genesis_time.astimezone(timezone.utc)),
            "validators": [{"name": name, "pub_key": key} for name, key in validators], **app}


def seat_name(association: str, seat: Identity) -> str:
    prefix = f"{association}.board-"
    if not seat.account.startswith(prefix):
        raise GenesisError(f"a board seat's account is {prefix}<name>, not {seat.account}")
    return seat.account[len(prefix):]


def node_public_key(home: Path) -> str:
    """The consensus public key in a CometBFT home's priv_validator_key.json."""
    return read_key_file(home / "config" / "priv_validator_key.json")


def dump_spec(spec: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

