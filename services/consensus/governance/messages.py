from __future__ import annotations

from pydantic import Field

from services.consensus.members.messages import Msg

MAX_POLICY_BYTES = 32 * 1024


class PublishPolicy(Msg):
    """Association only: a new version of the Cedar policy; it applies from the block that commits it."""

    version: int = Field(ge=2)
    text: str = Field(min_length=1, max_length=MAX_POLICY_BYTES)
