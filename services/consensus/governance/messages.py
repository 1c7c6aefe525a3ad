from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from services.consensus.members.messages import Msg, _ed25519_key

MAX_POLICY_BYTES = 32 * 1024
MAX_SEATS = 20
MIN_TTL_S, MAX_TTL_S = 3_600, 90 * 86_400
ProposalId = Field(min_length=2, max_length=64, pattern=r"^[a-z0-9][a-z0-9.\-]*$")
SeatName = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9\-]*$")
# The association's powers a board may leave to its officer key (governance/powers.py).
Power = Literal["members", "suspend", "access", "credits", "policy", "keys", "recovery", "validators", "params"]
Holder = Literal["officer", "board"]


class PublishPolicy(Msg):
    """Association only: a new version of the Cedar policy; it applies from the block that commits it."""

    version: int = Field(ge=2)
    text: str = Field(min_length=1, max_length=MAX_POLICY_BYTES)


class Action(Msg):
    """What a proposal does once approved: a transaction of the association, as it would be signed."""

    type: str = Field(min_length=3, max_length=64, pattern=r"^[a-z]+\.[A-Za-z]+$")
    payload: dict[str, Any] = Field(default_factory=dict)


class Propose(Msg):
    """A board seat proposes an action; the proposer's own approval counts. It expires at
    ``expires_at`` (block time), by default the board's proposal lifetime from now."""

    id: str = ProposalId
    action: Action
    expires_at: int | None = Field(None, ge=1, le=10**11)


class Approve(Msg):
    """A board seat approves an open proposal; the k-th approval executes it in that block."""

    id: str = ProposalId


class Seat(Msg):
    name: str = SeatName
    public_key: str

    _key = field_validator("public_key")(_ed25519_key)


class ConfigureBoard(Msg):
    """Board only: the seats (each its own signing key, account ``<association>.board-<name>``),
    the threshold k, which powers the officer key may exercise alone, and the proposal lifetime."""

    seats: list[Seat] = Field(min_length=1, max_length=MAX_SEATS)
    threshold: int = Field(ge=1, le=MAX_SEATS)
    powers: dict[Power, Holder] | None = None  # only the powers named change
    proposal_ttl_s: int | None = Field(None, ge=MIN_TTL_S, le=MAX_TTL_S)

    @model_validator(mode="after")
    def _consistent(self) -> "ConfigureBoard":
        if self.threshold > len(self.seats):
            raise ValueError(f"threshold {self.threshold} is more than the {len(self.seats)} seats")
        if len({s.name for s in self.seats}) != len(self.seats):
            raise ValueError("seat names must be unique")
        if len({s.public_key for s in self.seats}) != len(self.seats):
            raise ValueError("each seat needs its own key")
        return self


class ScheduleUpgrade(Msg):
    """Board only: from ``height`` on, blocks need an app of at least ``app_version``; a node
    running an older binary stops at that height instead of applying the block."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")
    height: int = Field(ge=2, le=10**15)
    app_version: int = Field(ge=2, le=10**6)


class CancelUpgrade(Msg):
    """Board only: drop the scheduled upgrade before its height."""

    name: str = Field(min_length=1, max_length=64)


class SetParams(Msg):
    """Board only: change chain parameters (services/consensus/params.py); others keep their value."""

    params: dict[str, int] = Field(min_length=1, max_length=32)
