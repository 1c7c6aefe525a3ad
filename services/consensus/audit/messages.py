from __future__ import annotations

from pydantic import Field, model_validator

from services.consensus.members.messages import Msg


class Anchor(Msg):
    """Signed by the association's node account (the gateway's key): records [first, last] hash to digest."""

    first_seq: int = Field(ge=1)
    last_seq: int = Field(ge=1)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _ordered(self) -> "Anchor":
        if self.last_seq < self.first_seq:
            raise ValueError("last_seq is before first_seq")
        return self
