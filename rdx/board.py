"""The association board's client: propose, approve and follow proposals (rdx/governance_cli.py
is its command line, ``rdx board``).

Board seats talk to a validator's CometBFT RPC directly, not through the gateway: a board action
(issuing credits, changing validators, replacing a key, scheduling an upgrade) is the
association's, and its seats hold their own keys. Each call signs with the seat's key and waits
until the transaction is committed; the answer is the proposal as the chain then holds it
(``status``: open, executed, failed, expired).
"""

from __future__ import annotations

from typing import Any

from services.common.chain import ChainClient
from services.common.identity import Identity


class BoardError(RuntimeError):
    """A board call the chain refused (the message is the chain's reason)."""


class Board:
    def __init__(self, rpc_url: str, chain_id: str, seat: Identity | None = None, *, timeout: float = 30.0):
        self.client = ChainClient(rpc_url, chain_id, timeout=timeout)
        self.seat, self.timeout = seat, timeout

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> "Board":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- reads ------------------------------------------------------------------------------------
    async def board(self) -> dict[str, Any]:
        """Seats, threshold, powers and proposal lifetime (the board of one association key on a
        chain whose genesis named none: the chain answers not found, and this says so)."""
        doc = await self.client.query("/governance/board")
        if doc is None:
            raise BoardError("this chain's genesis named no board: its association's own key is a board of one")
        return doc

    async def proposal(self, proposal_id: str) -> dict[str, Any] | None:
        return await self.client.query(f"/governance/proposals/{proposal_id}")

    async def proposals(self, status: str | None = None) -> list[dict[str, Any]]:
        found = (await self.client.query("/governance/proposals/")).values()
        return [p for p in found if status is None or p["status"] == status]

    async def upgrade(self) -> dict[str, Any] | None:
        return await self.client.query("/governance/upgrade")

    async def validators(self) -> list[dict[str, Any]]:
        """The validator set as the chain's state has it (including changes not yet in effect)."""
        return list((await self.client.query("/validators/set/")).values())

    # -- writes -----------------------------------------------------------------------------------
    async def _send(self, type_: str, payload: dict[str, Any]) -> None:
        from services.common.chain import ChainError, TxRejected

        if self.seat is None:
            raise BoardError("proposing and approving need the seat's signing key")
        try:
            await self.client.submit(self.seat, type_, payload, timeout=self.timeout)
        except TxRejected as exc:
            raise BoardError(f"{type_} refused (code {exc.code}): {exc.log}") from None
        except ChainError as exc:
            raise BoardError(str(exc)) from None

    async def propose(self, proposal_id: str, action_type: str, payload: dict[str, Any],
                      expires_at: int | None = None) -> dict[str, Any]:
        """Propose an action of the association (a transaction type of governance/powers.py
        ``BY_TYPE`` and its payload); this seat's approval counts."""
        body: dict[str, Any] = {"id": proposal_id, "action": {"type": action_type, "payload": payload}}
        if expires_at is not None:
            body["expires_at"] = expires_at
        await self._send("board.Propose", body)
        return await self.proposal(proposal_id)

    async def approve(self, proposal_id: str) -> dict[str, Any]:
        await self._send("board.Approve", {"id": proposal_id})
        return await self.proposal(proposal_id)
