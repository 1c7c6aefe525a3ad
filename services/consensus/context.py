"""What a transaction handler sees: the state (through keepers), the block, the signer, and a
way to emit events. A handler checks, mutates through keepers, emits; or raises Rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.tx import Tx
from services.consensus.state import Overlay


class Rejected(Exception):
    """The transaction is refused with an ABCI code; its writes are discarded."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class Context:
    store: Overlay
    height: int
    time: int  # block time, unix seconds: the only clock a handler may read
    tx: Tx | None = None
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    # Set while a board proposal executes its action: the handler acts as the association's own
    # account (``acting_as``), authorised by the board's approvals rather than by ``tx``'s signer;
    # and for a tx signed by a member's delegate (kind ``delegate``), which acts as its member.
    acting_as: str | None = None
    proposal: str | None = None

    @property
    def signer(self) -> str:
        if self.acting_as is not None:
            return self.acting_as
        assert self.tx is not None
        return self.tx.signer

    def emit(self, type_: str, entity: str, **data: Any) -> None:
        self.events.append((type_, entity, data))
