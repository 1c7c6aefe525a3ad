"""Drive the state machine through its ABCI methods with no node (pure logic), checking the
invariants after every block."""

from __future__ import annotations

import json

from google.protobuf.timestamp_pb2 import Timestamp
from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.common.tx import Tx
from services.consensus.app import RdxApp
from services.consensus.invariants import violations
from services.consensus.state import Database, Overlay

CHAIN = "rdx-test"


class Harness:
    def __init__(self, path, association: Identity, balances: dict[str, int] | None = None):
        self.db = Database(path)
        self.app = RdxApp(self.db, CHAIN)
        self.association = association
        self.nonces: dict[str, int] = {}
        genesis = {"association": {"id": "association", "name": "Assoc", "roles": ["association"],
                                   "public_key": association.public_key},
                   "balances": balances or {}}
        self.app.init_chain(abci.RequestInitChain(chain_id=CHAIN, app_state_bytes=json.dumps(genesis).encode(),
                                                  time=Timestamp(seconds=1_700_000_000)))
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
