from __future__ import annotations

from pydantic import Field

from services.consensus.assets.messages import AssetId, Operation
from services.consensus.members.messages import Msg

RequestId = Field(min_length=3, max_length=80, pattern=r"^[a-z0-9][a-z0-9.\-]*$")


class Request(Msg):
    id: str = RequestId
    asset: str = AssetId
    operations: list[Operation] = Field(min_length=1, max_length=6)
    purpose: str = Field(min_length=1, max_length=500)
    expires_at: int = Field(gt=0, description="unix seconds; compared with block time")
    max_runs: int = Field(ge=1, le=10**6)


class Approve(Msg):
    id: str = RequestId


class Reject(Msg):
    id: str = RequestId
    reason: str = Field(min_length=1, max_length=500)


class Revoke(Msg):
    id: str = RequestId
    reason: str = Field(min_length=1, max_length=500)
