"""Validator-set transactions (the association's ``validators`` power: the board by default)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.consensus.members.messages import Msg, _ed25519_key

MAX_POWER = 1_000_000  # per validator; CometBFT's bound on the total is far above MAX_VALIDATORS of these
MAX_CHANGES = 10


class Change(Msg):
    """One validator's new power: a key not in the set with power > 0 joins, power 0 leaves."""

    pub_key: str = Field(description="the validator's Ed25519 consensus key, base64 (priv_validator_key.json)")
    power: int = Field(ge=0, le=MAX_POWER)
    name: str | None = Field(None, min_length=1, max_length=64)

    _key = field_validator("pub_key")(_ed25519_key)


class Update(Msg):
    """Add, remove or re-weigh validators. CometBFT applies a block's updates two blocks later."""

    changes: list[Change] = Field(min_length=1, max_length=MAX_CHANGES)

    @model_validator(mode="after")
    def _one_change_per_key(self) -> "Update":
        if len({c.pub_key for c in self.changes}) != len(self.changes):
            raise ValueError("each key may change once per update")
        return self


class Rotate(Msg):
    """Replace a validator's consensus key: the new key takes the old one's power and name."""

    old_pub_key: str
    new_pub_key: str

    _old = field_validator("old_pub_key")(_ed25519_key)
    _new = field_validator("new_pub_key")(_ed25519_key)
