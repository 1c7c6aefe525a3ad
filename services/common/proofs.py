"""Checking a chain query answer against an app hash, without trusting the node that answered.

rdx's state is a sparse Merkle tree (``services/consensus/merkle.py``) whose root is the app hash
CometBFT puts in the next block's header. The tree follows the sparse Merkle tree of ICS-23's
``SmtSpec`` (the celestia/lazyledger SMT), checked against cosmos/ics23's ``testdata/smt``
vectors in the tests:

- a key's path is ``SHA-256(key)`` (256 bits, most significant first; 0 goes left);
- a leaf is ``SHA-256(0x00 ‖ path ‖ SHA-256(value))``, an inner node ``SHA-256(0x01 ‖ left ‖ right)``;
- an empty subtree is 32 zero bytes, and a subtree holding a single leaf is that leaf, placed
  as high as it is alone (so a tree of n keys is about log2(n) deep).

An ABCI query with ``prove=true`` answers with one ``ProofOp`` of type ``PROOF_TYPE`` whose
``key`` is the state key and whose ``data`` is (big-endian, no padding):

    version (1 byte, 1) ‖ kind (1 byte) ‖ [other leaf's path (32) ‖ its value hash (32), kind 2 only]
    ‖ depth (2 bytes, 0..256) ‖ depth × 32-byte siblings, from the root down

with kind 0: the key is present (the answer's value is its leaf's value); kind 1: absent, the
key's path ends in an empty subtree; kind 2: absent, the path ends at another key's leaf.

The value proven is the exact bytes the chain stores: the canonical JSON text of the state value.
Everything here is total on hostile input: any malformed proof raises ``ProofError``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PROOF_TYPE = "rdx:smt-sha256:v1"
CHANGED_SINCE = "changed at height "  # a proven answer's info: its key changed in a later block
EMPTY = bytes(32)
LEAF_PREFIX, INNER_PREFIX = b"\x00", b"\x01"
EXISTS, ABSENT_EMPTY, ABSENT_LEAF = 0, 1, 2
MAX_DEPTH = 256
MAX_PROOF_BYTES = 4 + 64 + MAX_DEPTH * 32


class ProofError(ValueError):
    """The answer is not proven by the app hash: refuse it."""


def path_of(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def value_hash(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def leaf_hash(path: bytes, hashed_value: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + path + hashed_value).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(INNER_PREFIX + left + right).digest()


def bit(path: bytes, depth: int) -> int:
    return (path[depth >> 3] >> (7 - (depth & 7))) & 1


@dataclass(frozen=True)
class Proof:
    """Where a key's path ends in the tree, and the siblings on the way down."""

    kind: int
    siblings: tuple[bytes, ...]  # from the root down
    other_path: bytes = b""  # kind ABSENT_LEAF: the leaf found where the key would be
    other_value_hash: bytes = b""

    def encode(self) -> bytes:
        other = self.other_path + self.other_value_hash if self.kind == ABSENT_LEAF else b""
        return bytes([1, self.kind]) + other + len(self.siblings).to_bytes(2, "big") + b"".join(self.siblings)

    @classmethod
    def decode(cls, data: bytes) -> "Proof":
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_PROOF_BYTES:
            raise ProofError("proof data is not bytes of a plausible size")
        data = bytes(data)
        if len(data) < 4 or data[0] != 1:
            raise ProofError("proof data is not a version-1 rdx state proof")
        kind, at = data[1], 2
        other_path = other_value_hash = b""
        if kind not in (EXISTS, ABSENT_EMPTY, ABSENT_LEAF):
            raise ProofError(f"unknown proof kind {kind}")
        if kind == ABSENT_LEAF:
            if len(data) < at + 66:
                raise ProofError("proof data too short for the leaf it names")
            other_path, other_value_hash, at = data[at:at + 32], data[at + 32:at + 64], at + 64
        depth = int.from_bytes(data[at:at + 2], "big")
        at += 2
        if depth > MAX_DEPTH or len(data) != at + 32 * depth:
            raise ProofError("proof data length does not match its depth")
        siblings = tuple(data[i:i + 32] for i in range(at, len(data), 32))
        return cls(kind, siblings, other_path, other_value_hash)

    def root(self, path: bytes, value: bytes | None) -> bytes:
        """The root this proof gives for ``path`` holding ``value`` (None: absent). Raises
        ProofError when the proof cannot say that at all (a presence proof for an absence, or a
        leaf that is not where the key would be)."""
        depth = len(self.siblings)
        if self.kind == EXISTS:
            if value is None:
                raise ProofError("the proof shows the key present, the answer claims it absent")
            node = leaf_hash(path, value_hash(value))
        elif value is not None:
            raise ProofError("the proof shows the key absent, the answer claims a value")
        elif self.kind == ABSENT_EMPTY:
            node = EMPTY
        else:
            if self.other_path == path:
                raise ProofError("an absence proof may not name the key's own leaf")
            if any(bit(self.other_path, d) != bit(path, d) for d in range(depth)):
                raise ProofError("the leaf in the absence proof is not on the key's path")
            node = leaf_hash(self.other_path, self.other_value_hash)
        for d in range(depth - 1, -1, -1):
            sibling = self.siblings[d]
            node = inner_hash(node, sibling) if bit(path, d) == 0 else inner_hash(sibling, node)
        return node


def _ops(proof_ops: Any) -> list[tuple[str, bytes, bytes]]:
    """ProofOps as the protobuf (``.ops`` of ``.type/.key/.data``), CometBFT RPC's JSON
    (``{"ops": [{"type", "key", "data"}]}``, key and data base64), or a list of ops or of
    ``(type, key, data)`` tuples."""
    ops = proof_ops.get("ops") if isinstance(proof_ops, Mapping) else getattr(proof_ops, "ops", proof_ops)
    if not isinstance(ops, Iterable) or isinstance(ops, (str, bytes)):
        raise ProofError("no proof ops in the answer")
    found = []
    for op in list(ops)[:8]:
        try:
            if isinstance(op, Mapping):
                found.append((str(op["type"]), base64.b64decode(op.get("key") or "", validate=True),
                              base64.b64decode(op.get("data") or "", validate=True)))
            elif isinstance(op, tuple) and len(op) == 3:
                found.append((str(op[0]), bytes(op[1]), bytes(op[2])))
            else:
                found.append((str(op.type), bytes(op.key), bytes(op.data)))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProofError("a proof op is malformed") from None
    return found


def verify(app_hash: bytes, key: str, value: bytes | None, proof_ops: Any) -> None:
    """Check that the state under ``app_hash`` holds ``value`` (the exact stored bytes) at
    ``key``, or, with ``value`` None, holds nothing there. ``key`` is the key the caller asked
    for: the answer's own key is only compared with it. Raises ProofError otherwise."""
    if not isinstance(app_hash, bytes) or len(app_hash) != 32:
        raise ProofError("the app hash is not 32 bytes: this chain's state is not a state tree")
    ops = _ops(proof_ops)
    if len(ops) != 1 or ops[0][0] != PROOF_TYPE:
        raise ProofError(f"expected one proof op of type {PROOF_TYPE}")
    _, op_key, data = ops[0]
    if op_key != key.encode():
        raise ProofError("the proof is for another key")
    if Proof.decode(data).root(path_of(key), value) != app_hash:
        raise ProofError("the proof does not lead to the app hash")


def verify_rpc_answer(app_hash: bytes, key: str, result: Mapping[str, Any]) -> bytes | None:
    """Check CometBFT's ``/abci_query?prove=true`` JSON (``result`` or ``result["response"]``)
    for ``key`` against ``app_hash``: the proven value's bytes, or None when proven absent.
    Only OK (0) and NOT_FOUND (11) answers can be proven; anything else raises ProofError."""
    response = result.get("response", result) if isinstance(result, Mapping) else None
    if not isinstance(response, Mapping):
        raise ProofError("not an abci_query answer")
    code = response.get("code", 0)
    try:
        value = base64.b64decode(response.get("value") or "", validate=True)
    except (TypeError, ValueError):
        raise ProofError("the answer's value is not base64") from None
    if code == 0:
        claimed: bytes | None = value
    elif code == 11 and not value:
        claimed = None
    else:
        raise ProofError(f"an answer with code {code!r} proves nothing")
    verify(app_hash, key, claimed, response.get("proofOps") or response.get("proof_ops") or {})
    return claimed
