"""Listing transactions. The chain checks what it enforces (level, operations, commitment,
price, group size) and the descriptive metadata against the shared listing contract
(services/common/listing.py), the same model the catalog validates drafts with."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from services.common.listing import Level, ListingMetadata, Operation, Price, level_problems
from services.common.privacy import PrivacyBudget
from services.consensus.members.messages import Msg

AssetId = Field(min_length=3, max_length=80, pattern=r"^[a-z0-9][a-z0-9.\-]*$")


class Listing(Msg):
    level: Level
    operations: list[Operation] = Field(min_length=1, max_length=6)
    commitment: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 Merkle root of the canonical rows")
    price: Price
    min_group_size: int = Field(1, ge=1, le=10**6)
    privacy_budget: PrivacyBudget | None = Field(None, description="ε per period per consumer (services/common/privacy.py)")
    metadata: ListingMetadata = Field(description="the listing contract's metadata (strict, extra fields forbidden)")

    @field_validator("operations")
    @classmethod
    def _unique(cls, ops: list[str]) -> list[str]:
        if len(set(ops)) != len(ops):
            raise ValueError("operations must not repeat")
        return sorted(ops)

    @field_validator("metadata")
    @classmethod
    def _fits_level(cls, md: ListingMetadata, info: ValidationInfo) -> ListingMetadata:
        """A sample only at L1/L2 (``level`` is validated before ``metadata``)."""
        problems = level_problems(info.data.get("level"), md)
        if problems:
            raise ValueError("\n".join(f"{path}: {message}" for path, message in problems))
        return md


class List(Listing):
    id: str = AssetId


class Update(Listing):
    id: str = AssetId


class Delist(Msg):
    id: str = AssetId
    reason: str = Field(min_length=1, max_length=500)


class Suspend(Msg):
    """Kill switch on one asset (owner or association): running jobs on it are aborted."""

    id: str = AssetId
    reason: str = Field(min_length=1, max_length=500)
