"""The ABCI 2.0 application interface: one method per request, typed protobuf in and out.

The defaults are those of CometBFT's own ``BaseApplication`` (abci/types/application.go),
except where that would make a node stall or misbehave: snapshot offers and chunks are
answered ABORT rather than the zero value UNKNOWN (which CometBFT's state sync treats as an
error), and ``prepare_proposal`` counts each transaction at the size CometBFT checks the
block against, not its raw length. A subclass overrides what it implements; any method may
be ``async def``. What a method raises is logged and sent to CometBFT as an exception, which
halts the node, so exception messages must not carry transaction bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, Union

from tendermint.abci import types_pb2 as abci

_T = TypeVar("_T")
MaybeAwaitable = Union[_T, Awaitable[_T]]
"""A result, or an awaitable of it: the server awaits whatever is awaitable."""

CODE_OK = 0


def proto_tx_size(tx: bytes) -> int:
    """Bytes ``tx`` takes in a block's ``Data``: CometBFT's ``ComputeProtoSizeForTxs``.

    ``Txs.Validate(max_tx_bytes)`` sums this (field tag, varint length, payload), so a
    proposal summed by raw length alone could be rejected by CometBFT itself.
    """
    n = len(tx)
    varint_len = 1
    while n >= 0x80:
        n >>= 7
        varint_len += 1
    return 1 + varint_len + len(tx)


class Application:
    """Base class for an ABCI 2.0 application; every method has a harmless default."""

    def info(self, req: abci.RequestInfo) -> MaybeAwaitable[abci.ResponseInfo]:
        """Report the last committed height and app hash; empty means a fresh chain."""
        return abci.ResponseInfo()

    def init_chain(self, req: abci.RequestInitChain) -> MaybeAwaitable[abci.ResponseInitChain]:
        """Accept the genesis validators and consensus params unchanged."""
        return abci.ResponseInitChain()

    def query(self, req: abci.RequestQuery) -> MaybeAwaitable[abci.ResponseQuery]:
        """Answer a read of application state; the default knows nothing."""
        return abci.ResponseQuery(code=CODE_OK)

    def undecodable_query(self) -> abci.ResponseQuery:
        """The answer to a query CometBFT sent but protobuf cannot parse (a path that is not UTF-8)."""
        return abci.ResponseQuery(code=1, log="the query path is not UTF-8")

    def check_tx(self, req: abci.RequestCheckTx) -> MaybeAwaitable[abci.ResponseCheckTx]:
        """Admit a transaction to the mempool; the default admits everything."""
        return abci.ResponseCheckTx(code=CODE_OK)

    def verify_ahead(self, txs: list[bytes]) -> None:
        """The txs of CheckTx requests received and not yet served, in order: a hint an app may
        start on (RdxApp verifies their signatures in another process meanwhile). Ignored here."""

    def commit(self, req: abci.RequestCommit) -> MaybeAwaitable[abci.ResponseCommit]:
        """Persist the state that ``finalize_block`` produced; retain all blocks."""
        return abci.ResponseCommit()

    def list_snapshots(self, req: abci.RequestListSnapshots) -> MaybeAwaitable[abci.ResponseListSnapshots]:
        """Offer no state-sync snapshots."""
        return abci.ResponseListSnapshots()

    def offer_snapshot(self, req: abci.RequestOfferSnapshot) -> MaybeAwaitable[abci.ResponseOfferSnapshot]:
        """Without snapshot support no offer can succeed, so stop state sync outright."""
        return abci.ResponseOfferSnapshot(result=abci.ResponseOfferSnapshot.ABORT)

    def load_snapshot_chunk(
        self, req: abci.RequestLoadSnapshotChunk
    ) -> MaybeAwaitable[abci.ResponseLoadSnapshotChunk]:
        """Serve no chunk: ``list_snapshots`` offered none."""
        return abci.ResponseLoadSnapshotChunk()

    def apply_snapshot_chunk(
        self, req: abci.RequestApplySnapshotChunk
    ) -> MaybeAwaitable[abci.ResponseApplySnapshotChunk]:
        """Stop state sync: a snapshot offer is never accepted, so no chunk is expected."""
        return abci.ResponseApplySnapshotChunk(result=abci.ResponseApplySnapshotChunk.ABORT)

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> MaybeAwaitable[abci.ResponsePrepareProposal]:
        """Propose the mempool's transactions in order, stopping before ``max_tx_bytes``.

        Stops at the first that does not fit rather than skipping it, so transactions
        from one signer keep their order.
        """
        txs: list[bytes] = []
        total = 0
        for tx in req.txs:
            total += proto_tx_size(tx)
            if total > req.max_tx_bytes:
                break
            txs.append(tx)
        return abci.ResponsePrepareProposal(txs=txs)

    def process_proposal(self, req: abci.RequestProcessProposal) -> MaybeAwaitable[abci.ResponseProcessProposal]:
        """Accept every proposal; validity is then decided per transaction in ``finalize_block``."""
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def extend_vote(self, req: abci.RequestExtendVote) -> MaybeAwaitable[abci.ResponseExtendVote]:
        """Add nothing to the precommit vote."""
        return abci.ResponseExtendVote()

    def verify_vote_extension(
        self, req: abci.RequestVerifyVoteExtension
    ) -> MaybeAwaitable[abci.ResponseVerifyVoteExtension]:
        """Accept other validators' (empty) vote extensions."""
        return abci.ResponseVerifyVoteExtension(status=abci.ResponseVerifyVoteExtension.ACCEPT)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> MaybeAwaitable[abci.ResponseFinalizeBlock]:
        """Apply the decided block: one result per transaction, all OK by default."""
        return abci.ResponseFinalizeBlock(tx_results=[abci.ExecTxResult(code=CODE_OK) for _ in req.txs])
