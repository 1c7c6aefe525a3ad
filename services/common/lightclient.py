"""A CometBFT light client: trust a header only when the validators' signatures say so, then trust
a query answer only when its proof leads to that header's app hash (issue 18, part 3).

It follows CometBFT v0.38's ``light/verifier.go``:

- a header is the one its commit signed: the commit's block id is the header's hash (the Merkle
  root of its 14 protobuf-encoded fields, ``types.Header.Hash``), and the validator set is the
  one the header names (``ValidatorsHash``, the root of each ``SimpleValidator``'s bytes);
- *adjacent* (height h+1 after a trusted h): the new set is the trusted header's
  ``NextValidatorsHash``, and more than 2/3 of its power signed the commit;
- *skipping* (any later height): validators holding at least ``trust_level`` (1/3) of the trusted
  set's power signed the new commit, and more than 2/3 of the new set's power did;
- a trusted header older than the trusting period, or a new header from the future (beyond the
  clock drift) or not after the trusted one, is refused.

Signatures are Ed25519 over the canonical vote (``tendermint.types.CanonicalVote``, length
delimited), encoded with the protobuf modules generated from CometBFT's own ``.proto`` files
(``rdx setup``), so the sign bytes cannot drift from the node's. Input is what CometBFT's RPC
answers (``/commit``, ``/validators``); anything malformed raises ``LightClientError``.
Fetching and bisection are ``services/common/verified.py``'s. Not done: evidence of forks to a witness.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from google.protobuf import wrappers_pb2
from google.protobuf.timestamp_pb2 import Timestamp
import rdx_ed25519
from tendermint.crypto.keys_pb2 import PublicKey
from tendermint.types import canonical_pb2, types_pb2, validator_pb2
from tendermint.version.types_pb2 import Consensus

from services.common import proofs

PRECOMMIT = 2  # tendermint.types.SignedMsgType
FLAG_ABSENT, FLAG_COMMIT, FLAG_NIL = 1, 2, 3  # tendermint.types.BlockIDFlag
MAX_VALIDATORS = 10_000
TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


class LightClientError(ValueError):
    """The header, commit or validator set is not proven: refuse it."""


class NotEnoughTrust(LightClientError):
    """A skip too far: less than the trust level of the trusted set signed. Verifying a header in
    between first may still succeed (bisection)."""


@dataclass(frozen=True)
class Validator:
    address: bytes
    pub_key: bytes  # Ed25519, 32 bytes
    power: int


@dataclass(frozen=True)
class LightBlock:
    """A signed header and the validator set it names, as CometBFT's RPC gave them."""

    header: types_pb2.Header
    commit: types_pb2.Commit
    validators: tuple[Validator, ...]

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def chain_id(self) -> str:
        return self.header.chain_id

    @property
    def app_hash(self) -> bytes:
        return self.header.app_hash

    @property
    def time_ns(self) -> int:
        return self.header.time.seconds * 10**9 + self.header.time.nanos


# -- hashing, as CometBFT's crypto/merkle and types --------------------------------------------
def merkle_root(items: list[bytes]) -> bytes:
    """``merkle.HashFromByteSlices``: RFC 6962 leaves and inner nodes, split at the largest
    power of two below n."""
    if not items:
        return hashlib.sha256(b"").digest()
    if len(items) == 1:
        return hashlib.sha256(b"\x00" + items[0]).digest()
    k = 1 << ((len(items) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + merkle_root(items[:k]) + merkle_root(items[k:])).digest()


def header_hash(h: types_pb2.Header) -> bytes:
    def wrap(value: bytes) -> bytes:
        return wrappers_pb2.BytesValue(value=value).SerializeToString()

    return merkle_root([
        h.version.SerializeToString(), wrappers_pb2.StringValue(value=h.chain_id).SerializeToString(),
        wrappers_pb2.Int64Value(value=h.height).SerializeToString(), h.time.SerializeToString(),
        h.last_block_id.SerializeToString(), wrap(h.last_commit_hash), wrap(h.data_hash), wrap(h.validators_hash),
        wrap(h.next_validators_hash), wrap(h.consensus_hash), wrap(h.app_hash), wrap(h.last_results_hash),
        wrap(h.evidence_hash), wrap(h.proposer_address)])


def validators_hash(validators: tuple[Validator, ...]) -> bytes:
    return merkle_root([validator_pb2.SimpleValidator(pub_key=PublicKey(ed25519=v.pub_key), voting_power=v.power)
                        .SerializeToString() for v in validators])


def vote_sign_bytes(chain_id: str, commit: types_pb2.Commit, sig: types_pb2.CommitSig) -> bytes:
    """``Commit.VoteSignBytes``: the canonical precommit a commit signature signed, length-delimited."""
    vote = canonical_pb2.CanonicalVote(type=PRECOMMIT, height=commit.height, round=commit.round,
                                       timestamp=sig.timestamp, chain_id=chain_id)
    if sig.block_id_flag == FLAG_COMMIT:
        vote.block_id.hash = commit.block_id.hash
        vote.block_id.part_set_header.total = commit.block_id.part_set_header.total
        vote.block_id.part_set_header.hash = commit.block_id.part_set_header.hash
    body = vote.SerializeToString()
    return _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# -- verification ------------------------------------------------------------------------------
def _signed_power(block: LightBlock, chain_id: str, validators: tuple[Validator, ...], *, by_index: bool) -> int:
    """The power of ``validators`` whose valid signature for the block is in its commit. By index
    for the block's own set (the commit is in its order), by address for another (trusted) set."""
    commit = block.commit
    by_address = {v.address: v for v in validators}
    seen: set[bytes] = set()
    power = 0
    for index, sig in enumerate(commit.signatures):
        if sig.block_id_flag != FLAG_COMMIT:
            continue
        validator = (validators[index] if index < len(validators) else None) if by_index \
            else by_address.get(sig.validator_address)
        if validator is None or validator.address != sig.validator_address or validator.address in seen:
            continue
        # By ZIP-215's rules, as CometBFT checks votes (curve25519-voi's ZIP-215 options): libsodium's
        # stricter check let one validator's vote, valid to every node, make this refuse the block.
        if not rdx_ed25519.verify(validator.pub_key, vote_sign_bytes(chain_id, commit, sig), sig.signature):
            raise LightClientError(f"a bad signature from validator {validator.address.hex().upper()} "
                                   f"at height {commit.height}")
        seen.add(validator.address)
        power += validator.power
    return power


def verify_signed_header(block: LightBlock, chain_id: str) -> None:
    """The commit is for this header, and this header names this validator set, and more than
    2/3 of its power signed (``VerifyCommitLight``)."""
    h, commit = block.header, block.commit
    if h.chain_id != chain_id:
        raise LightClientError(f"header of chain {h.chain_id!r}, not {chain_id!r}")
    if commit.height != h.height:
        raise LightClientError("the commit is for another height than the header")
    if commit.block_id.hash != header_hash(h):
        raise LightClientError("the commit did not sign this header (its hash differs)")
    if not block.validators or validators_hash(block.validators) != h.validators_hash:
        raise LightClientError("the validator set is not the one the header names")
    if len(commit.signatures) != len(block.validators):
        raise LightClientError("the commit's signatures do not match the validator set's size")
    total = sum(v.power for v in block.validators)
    if _signed_power(block, chain_id, block.validators, by_index=True) * 3 <= total * 2:
        raise LightClientError(f"less than 2/3 of the voting power signed height {h.height}")


def verify(trusted: LightBlock, untrusted: LightBlock, *, now: datetime, trusting_period_s: float,
           max_clock_drift_s: float = 10.0, trust_level: tuple[int, int] = (1, 3)) -> None:
    """Accept ``untrusted`` from ``trusted`` (itself verified, or the genesis's), adjacent or
    skipping, or raise LightClientError."""
    chain_id = trusted.chain_id
    now_ns = int(now.timestamp() * 10**9)
    if trusted.time_ns + int(trusting_period_s * 10**9) <= now_ns:
        raise LightClientError(f"the trusted header (height {trusted.height}) is older than the trusting period")
    if untrusted.height <= trusted.height:
        raise LightClientError("the new header is not after the trusted one")
    if untrusted.time_ns <= trusted.time_ns:
        raise LightClientError("the new header's time is not after the trusted one's")
    if untrusted.time_ns >= now_ns + int(max_clock_drift_s * 10**9):
        raise LightClientError("the new header is from the future")
    if untrusted.height == trusted.height + 1:
        if untrusted.header.validators_hash != trusted.header.next_validators_hash:
            raise LightClientError("the new header's validators are not the ones the trusted header named next")
    else:
        numerator, denominator = trust_level
        trusted_total = sum(v.power for v in trusted.validators)
        signed = _signed_power(untrusted, chain_id, trusted.validators, by_index=False)
        if signed * denominator < trusted_total * numerator:
            raise NotEnoughTrust(f"less than {numerator}/{denominator} of the trusted validators' power signed "
                                   f"height {untrusted.height}")
    verify_signed_header(untrusted, chain_id)


def verify_query(block: LightBlock, key: str, answer: Mapping[str, Any]) -> bytes | None:
    """A ``/abci_query?prove=true`` answer for ``key`` checked against a verified header: the
    answer's height must be the header's height - 1 (the header carries the app hash of the state
    committed just before it). The proven value, or None for a proven absence."""
    response = answer.get("response", answer) if isinstance(answer, Mapping) else None
    if not isinstance(response, Mapping):
        raise proofs.ProofError("not an abci_query answer")
    try:
        height = int(response.get("height", -1))
    except (TypeError, ValueError):
        raise proofs.ProofError("the answer's height is not a number") from None
    if height + 1 != block.height:
        raise proofs.ProofError(f"the answer is for height {height}; this header proves height {block.height - 1}")
    return proofs.verify_rpc_answer(block.app_hash, key, answer)


# -- CometBFT RPC JSON ---------------------------------------------------------------------------
def light_block(commit_result: Mapping[str, Any], validators_result: Mapping[str, Any]) -> LightBlock:
    """From ``/commit?height=h`` and ``/validators?height=h&per_page=...`` (every page joined)."""
    try:
        signed = commit_result["signed_header"]
        h, c = signed["header"], signed["commit"]
        header = types_pb2.Header(
            version=Consensus(block=int(h["version"]["block"]), app=int(h["version"].get("app", 0))),
            chain_id=str(h["chain_id"]), height=int(h["height"]), time=_time(h["time"]),
            last_block_id=_block_id(h["last_block_id"]), last_commit_hash=_hex(h["last_commit_hash"]),
            data_hash=_hex(h["data_hash"]), validators_hash=_hex(h["validators_hash"]),
            next_validators_hash=_hex(h["next_validators_hash"]), consensus_hash=_hex(h["consensus_hash"]),
            app_hash=_hex(h["app_hash"]), last_results_hash=_hex(h["last_results_hash"]),
            evidence_hash=_hex(h["evidence_hash"]), proposer_address=_hex(h["proposer_address"]))
        raw_sigs = c["signatures"]
        raw_vals = validators_result["validators"]
        if len(raw_sigs) > MAX_VALIDATORS or len(raw_vals) > MAX_VALIDATORS:
            raise LightClientError("too many validators")
        commit = types_pb2.Commit(height=int(c["height"]), round=int(c["round"]), block_id=_block_id(c["block_id"]),
                                  signatures=[_sig(s) for s in raw_sigs])
        validators = tuple(_validator(v) for v in raw_vals)
    except LightClientError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise LightClientError(f"not a CometBFT commit and validator set ({type(exc).__name__})") from None
    return LightBlock(header, commit, validators)


def _hex(text: Any) -> bytes:
    if not isinstance(text, str) or len(text) > 128:
        raise ValueError("hex field")
    return bytes.fromhex(text)


def _b64(text: Any, size: int | None = None) -> bytes:
    raw = base64.b64decode(text or "", validate=True)
    if size is not None and len(raw) != size:
        raise ValueError("size")
    return raw


def epoch_seconds(text: Any) -> float:
    """CometBFT's time (``2026-12-02T18:50:01.123456789Z``, always UTC) as epoch seconds; ValueError if not one."""
    t = _time(text)
    return t.seconds + t.nanos / 1e9


def _time(text: Any) -> Timestamp:
    match = TIME.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("time")
    seconds = int(datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return Timestamp(seconds=seconds, nanos=int((match[2] or "0").ljust(9, "0")))


def _block_id(raw: Mapping[str, Any]) -> types_pb2.BlockID:
    parts = raw.get("parts") or raw.get("part_set_header") or {}
    return types_pb2.BlockID(hash=_hex(raw.get("hash", "")), part_set_header=types_pb2.PartSetHeader(
        total=int(parts.get("total", 0)), hash=_hex(parts.get("hash", ""))))


def _sig(raw: Mapping[str, Any]) -> types_pb2.CommitSig:
    flag = int(raw["block_id_flag"])
    if flag not in (FLAG_ABSENT, FLAG_COMMIT, FLAG_NIL):
        raise ValueError("flag")
    sig = types_pb2.CommitSig(block_id_flag=flag, validator_address=_hex(raw.get("validator_address") or ""),
                              signature=_b64(raw.get("signature")))
    if flag != FLAG_ABSENT:
        sig.timestamp.CopyFrom(_time(raw["timestamp"]))
    return sig


def _validator(raw: Mapping[str, Any]) -> Validator:
    key = raw["pub_key"]
    if key.get("type") != "tendermint/PubKeyEd25519":
        raise LightClientError("only Ed25519 validator keys are supported")
    pub = _b64(key["value"], 32)
    power = int(raw["voting_power"])
    if not 0 < power < 2**62:
        raise ValueError("power")
    address = hashlib.sha256(pub).digest()[:20]
    if _hex(raw["address"]) != address:
        raise LightClientError("a validator's address is not its key's")
    return Validator(address, pub, power)
