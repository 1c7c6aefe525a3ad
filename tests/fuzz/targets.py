"""Fuzz targets over the chain's public input paths: each takes bytes and raises AssertionError
(or lets any other exception escape) only when the app misbehaves.

The same functions serve the coverage-guided fuzzer (``python -m tests.fuzz.run TARGET``,
libFuzzer through atheris) and the regression test that replays the kept corpus and every
crash ever found (tests/unit/consensus/test_fuzz_corpus.py).

Properties:
- tx_decode: any bytes give a Tx or a TxError of a decoding code; a Tx re-encodes to the
  very bytes it came from (one tx, one byte form).
- check_tx: any bytes as a tx get a refusal with a code and a log, never the internal-error
  code, and change neither committed state nor the mempool's check state.
- signed_check_tx: a correctly signed tx of any type with a fuzzed payload, from the
  association's officer, its board's seat or a member, reaches the handlers; whatever they decide, no handler fails
  (the internal-error code would mean a handler raised).
- query: any path gets an answer with a defined code; only OK answers carry a value.
- proposal: a block of a valid tx plus fuzzed txs (none of which can carry a registered
  key's signature) is rejected by ProcessProposal; PrepareProposal drops exactly the fuzzed
  txs and its output passes ProcessProposal (coherence); FinalizeBlock answers every tx.
"""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey
from tendermint.abci import types_pb2 as abci

from rdx.genesis import local_seat
from services.common.identity import Identity
from services.common.tx import Code, Tx, TxError
from services.consensus.app import HANDLERS, INTERNAL_ERROR
from services.consensus.state import Database, Overlay
from tests.chainsim import CHAIN, Harness, register

KNOWN_CODES = {v for k, v in vars(Code).items() if k.isupper()}
TYPES = sorted(HANDLERS)
T0 = 1_700_000_000
# Seeded keys: every run (and every replay of a corpus) sees the same chain.
ASSOCIATION = Identity("association", SigningKey(b"\x01" * 32))
MEMBER = Identity("fuzz-member", SigningKey(b"\x02" * 32))
SEAT = local_seat(ASSOCIATION)  # the chain's board: this one seat, threshold 1


@cache
def chain() -> Harness:
    """A chain with the association and one member, committed, shared by every input."""
    h = Harness(Path(tempfile.mkdtemp(prefix="rdx-fuzz-")) / "chain.sqlite", ASSOCIATION)
    h.block(register(h, MEMBER, roles=("provider", "consumer")))
    return h


def _snapshot(h: Harness) -> tuple:
    return h.state(), dict(h.app.check_state.writes)


def tx_decode(data: bytes) -> None:
    try:
        tx = Tx.decode(data)
    except TxError as exc:
        assert exc.code in (Code.UNDECODABLE, Code.OVERSIZE), exc.code
        assert str(exc)
        return
    assert tx.encode() == data


def check_tx(data: bytes) -> None:
    h = chain()
    before = _snapshot(h)
    resp = h.app.check_tx(abci.RequestCheckTx(tx=data))
    assert resp.code in KNOWN_CODES and resp.code != Code.OK and resp.log, (resp.code, resp.log)
    assert _snapshot(h) == before


def signed_check_tx(data: bytes) -> None:
    """First byte: signer and type; the rest: the payload as JSON (anything else: {})."""
    if not data:
        return
    h = chain()
    # The association's officer, its board's one seat (whose proposals execute at once, so a
    # fuzzed action reaches the association's handlers through the board), or a member.
    who = (SEAT if data[0] & 0x40 else ASSOCIATION) if data[0] & 0x80 else MEMBER
    type_ = TYPES[data[0] % len(TYPES)]
    try:
        payload = json.loads(data[1:])
    except (ValueError, RecursionError):
        payload = {}
    if not isinstance(payload, dict):
        payload = {"value": payload}
    nonce = h.app.check_state.get(f"accounts/{who.account}")["nonce"] + 1
    try:
        raw = Tx.build(who, CHAIN, type_, nonce, payload).encode()
    except (TxError, ValueError):
        return  # not a tx anyone can sign (floats, surrogates, depth): tx_decode covers those bytes
    resp = h.app.check_tx(abci.RequestCheckTx(tx=raw))
    assert resp.code in KNOWN_CODES and resp.code != INTERNAL_ERROR, (type_, resp.code, resp.log)
    h.app.check_state = Overlay(h.db)  # the next input starts from committed state


def query(data: bytes) -> None:
    h = chain()
    resp = h.app.query(abci.RequestQuery(path=data.decode("utf-8", "replace"), data=data[:64]))
    assert resp.code in KNOWN_CODES, resp.code
    assert (resp.code == Code.OK) == bool(resp.value), resp.code
    if resp.code == Code.OK:
        json.loads(resp.value)
    else:
        assert resp.log


def proposal(data: bytes) -> None:
    """``data`` split on 0xFF 0x00 into txs, after one valid tx; height and time follow the chain."""
    h = chain()
    nonce = h.app.check_state.get(f"accounts/{MEMBER.account}")["nonce"] + 1
    valid = Tx.build(MEMBER, CHAIN, "members.RotateKey", nonce, {"public_key": MEMBER.public_key}).encode()
    txs = [valid] + [part for part in data.split(b"\xff\x00") if part][:16]
    height, when = h.height + 1, Timestamp(seconds=T0 + (h.height + 1) * 10)
    # No fuzzed tx can carry a registered key's signature, so none may be in a block.
    processed = h.app.process_proposal(abci.RequestProcessProposal(height=height, time=when, txs=txs))
    expected = abci.ResponseProcessProposal.ACCEPT if txs == [valid] else abci.ResponseProcessProposal.REJECT
    assert processed.status == expected, (processed.status, len(txs))
    prepared = h.app.prepare_proposal(abci.RequestPrepareProposal(max_tx_bytes=4 << 20, height=height,
                                                                  time=when, txs=txs))
    assert list(prepared.txs) == [valid]
    again = h.app.process_proposal(abci.RequestProcessProposal(height=height, time=when, txs=prepared.txs))
    assert again.status == abci.ResponseProcessProposal.ACCEPT
    final = h.app.finalize_block(abci.RequestFinalizeBlock(height=height, time=when, txs=txs))
    assert len(final.tx_results) == len(txs) and final.tx_results[0].code == Code.OK
    assert all(r.code in KNOWN_CODES | {INTERNAL_ERROR} for r in final.tx_results)
    h.app._executions.clear()  # no Commit: the next input proposes the same height afresh
    h.app._pending = None


TARGETS = {f.__name__: f for f in (tx_decode, check_tx, signed_check_tx, query, proposal)}
