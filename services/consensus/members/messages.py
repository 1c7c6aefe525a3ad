"""Member transactions and their stateless validation."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MemberId = Field(min_length=2, max_length=40, pattern=r"^[a-z0-9][a-z0-9\-]*$")
AccountId = Field(min_length=2, max_length=64, pattern=r"^[a-z0-9][a-z0-9.\-]*$")
Role = Literal["association", "provider", "consumer", "compute_operator"]
# What a member's delegated key may sign: the member's own txs of these types, nothing else.
Power = Literal["jobs.Submit", "access.Request"]


def _ed25519_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError("must be base64") from None
    if len(raw) != 32:
        raise ValueError("must be a 32-byte Ed25519 public key")
    return value


class Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeInfo(Msg):
    public_key: str
    endpoint: str = Field(min_length=3, max_length=200, description="host:port of the member's compute node")

    _key = field_validator("public_key")(_ed25519_key)


class Register(Msg):
    """Association only: admit a member with its roles, signing key and (optional) compute node."""

    id: str = MemberId
    name: str = Field(min_length=1, max_length=200)
    roles: list[Role] = Field(min_length=1, max_length=4)
    public_key: str
    node: NodeInfo | None = None

    _key = field_validator("public_key")(_ed25519_key)


class SetNode(Msg):
    """The member itself: register or replace its compute node's key and endpoint."""

    node: NodeInfo


class RotateKey(Msg):
    """The account's current key signs its successor (member account or node account)."""

    public_key: str

    _key = field_validator("public_key")(_ed25519_key)


class Recover(Msg):
    """Association only (the board by default): replace an account's key, e.g. one that leaked.
    The old key stops verifying in the block that applies this; the member stays active."""

    account: str = AccountId
    public_key: str
    reason: str = Field(min_length=1, max_length=500)

    _key = field_validator("public_key")(_ed25519_key)


class Suspend(Msg):
    """Association only: a suspended member can sign nothing and its jobs are aborted."""

    member: str = MemberId
    reason: str = Field(min_length=1, max_length=500)


class Reinstate(Msg):
    member: str = MemberId


class Delegate(Msg):
    """The member's own key only: let another key sign the member's txs of ``powers`` until
    ``expires_at`` (chain time), as account ``<member>.delegate-<label>``."""

    label: str = Field(min_length=1, max_length=23, pattern=r"^[a-z0-9][a-z0-9\-]*$")
    public_key: str
    powers: list[Power] = Field(min_length=1, max_length=2)
    expires_at: int = Field(ge=0, le=2**53 - 1)

    _key = field_validator("public_key")(_ed25519_key)


class Undelegate(Msg):
    """The member's own key only: end one of its delegates (``<member>.delegate-<label>``)."""

    account: str = AccountId
