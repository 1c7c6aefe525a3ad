"""Drive the state machine through its ABCI methods with no node (pure logic), checking the
invariants after every block."""

from __future__ import annotations

import base64
import hashlib
import json

from google.protobuf.timestamp_pb2 import Timestamp
from nacl.signing import SigningKey
from tendermint.abci import types_pb2 as abci
from tendermint.crypto.keys_pb2 import PublicKey

from rdx.genesis import local_app_spec, local_seat

from services.common.identity import Identity, b64
from services.common.tx import Tx
from services.consensus.app import RdxApp
from services.consensus.invariants import violations
from services.consensus.state import Database, Overlay

CHAIN = "rdx-test"


class NextRelease(RdxApp):
    """The release after this one (app version 2), for the upgrade tests."""

    app_version = 2


class Harness:
    """A chain driven block by block. Its genesis is what ``rdx genesis`` writes for a local chain
    (rdx/genesis.py: a board, by default one seat derived from the association's key, the officer
    holding every power it may) with ``validators`` (consensus key, power; by default one key
    derived from the association's) recorded; ``legacy=True`` gives the genesis of chains made
    before boards existed (the association alone, no validator set recorded), and ``without``
    names fields of ``rdx genesis``'s spec to leave out (a chain made before them)."""

    def __init__(self, path, association: Identity, balances: dict[str, int] | None = None, *,
                 board: list[Identity] | None = None, threshold: int = 1, powers: dict[str, str] | None = None,
                 validators: list[tuple[str, int]] | None = None, legacy: bool = False,
                 without: tuple[str, ...] = (), app_class: type[RdxApp] = RdxApp):
        self.db = Database(path)
        self.app = app_class(self.db, CHAIN)
        self.association = association
        self.nonces: dict[str, int] = {}
        if legacy:
            genesis = {"association": {"id": "association", "name": "Assoc", "roles": ["association"],
                                       "public_key": association.public_key}}
            self.board, self.validators = [association], []
        else:
            genesis = local_app_spec(association, board=board, threshold=threshold, powers=powers)
            for field in without:
                del genesis[field]
            self.board = board if board is not None else [local_seat(association)]
            derived = SigningKey(hashlib.sha256(b"validator" + bytes(association.signing_key)).digest())
            self.validators = validators if validators is not None else [(b64(bytes(derived.verify_key)), 10)]
        genesis["balances"] = balances or {}
        self.app.init_chain(abci.RequestInitChain(
            chain_id=CHAIN, app_state_bytes=json.dumps(genesis).encode(), time=Timestamp(seconds=1_700_000_000),
            validators=[abci.ValidatorUpdate(pub_key=PublicKey(ed25519=base64.b64decode(key)), power=power)
                        for key, power in self.validators]))
        self.height = 0
        self.t0 = 1_700_000_000

    def tx(self, who: Identity, type_: str, payload: dict, nonce: int | None = None, chain: str = CHAIN) -> bytes:
        if nonce is None:
            nonce = self.nonces.get(who.account, 0) + 1
            self.nonces[who.account] = nonce
        return Tx.build(who, chain, type_, nonce, payload).encode()

    def block(self, *txs: bytes) -> list[abci.ExecTxResult]:
        self.height += 1
        resp = self.app.finalize_block(abci.RequestFinalizeBlock(
            height=self.height, txs=list(txs), time=Timestamp(seconds=self.t0 + self.height * 10)))
        self.app.commit(abci.RequestCommit())
        assert violations(Overlay(self.db)) == []
        self.last = list(resp.tx_results)
        self.last_response = resp
        return self.last

    def check(self, raw: bytes) -> abci.ResponseCheckTx:
        return self.app.check_tx(abci.RequestCheckTx(tx=raw))

    def state(self) -> dict:
        return dict(self.db.conn.execute("SELECT key, value FROM kv").fetchall())




def register(chain: Harness, member: Identity, roles=("provider",), node: Identity | None = None) -> bytes:
    payload = {"id": member.account, "name": member.account.upper(), "roles": list(roles),
               "public_key": member.public_key}
    if node is not None:
        payload["node"] = {"public_key": node.public_key, "endpoint": "127.0.0.1:50051"}
    return chain.tx(chain.association, "members.Register", payload)
