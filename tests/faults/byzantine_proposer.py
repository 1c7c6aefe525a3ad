"""A byzantine validator for the fault tests: ``python -m tests.faults.byzantine_proposer``.

It runs rdx's consensus service unchanged but for its app (the ``app_class`` seam of
``services.consensus.__main__.build``): when it proposes, it adds one tx of every hostile class
(tests/hostile.py) to the honest proposal, and it votes for any proposal, its own included.
The honest validators must reject its proposals in ProcessProposal, so no such tx is ever in a
committed block and the chain keeps committing.
"""

from __future__ import annotations

from tendermint.abci import types_pb2 as abci

from services.common.identity import Identity
from services.consensus.__main__ import ConsensusSettings, build
from services.consensus.app import RdxApp
from tests.hostile import hostile_txs


class ByzantineProposer(RdxApp):
    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        honest = super().prepare_proposal(req)
        # Signed in the association's name with a key that is not its own: the decoding classes
        # fail before the signature matters, the others on the signature.
        impostor = Identity("association", Identity.generate("impostor").signing_key)
        poison = list(hostile_txs(impostor, self.chain_id, nonce=1).values())
        return abci.ResponsePrepareProposal(txs=list(honest.txs) + poison)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)


if __name__ == "__main__":
    build(ConsensusSettings(), app_class=ByzantineProposer).run()
