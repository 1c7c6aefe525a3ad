from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from services.consensus.access.messages import RequestId
from services.consensus.assets.messages import AssetId
from services.consensus.members.messages import Msg

JobType = Literal["psi", "psi_cardinality", "aggregation", "he_scoring", "supply_chain"]
JobId = Field(min_length=3, max_length=80, pattern=r"^[a-z0-9][a-z0-9.\-]*$")
Hash = Field(pattern=r"^[0-9a-f]{64}$")
MAX_PRICE = 10**15  # credits: every amount a job moves stays far inside int64 (and 2^53)

OPERATION_OF = {"psi": "psi", "psi_cardinality": "psi_cardinality", "aggregation": "aggregation",
                "he_scoring": "he_scoring", "supply_chain": "supply_chain_verification"}


class Input(Msg):
    asset: str = AssetId
    grant: str = RequestId


class Submit(Msg):
    id: str = JobId
    type: JobType
    inputs: list[Input] = Field(min_length=1, max_length=16)
    params: dict[str, Any] = Field(default_factory=dict, description="job-type parameters, opaque to the chain")
    max_price: int = Field(ge=0, le=MAX_PRICE, description="must cover the job's quote (services/consensus/pricing.py)")
    timeout_s: int = Field(600, ge=10, le=86_400)

    @field_validator("inputs")
    @classmethod
    def _distinct(cls, inputs: list[Input]) -> list[Input]:
        if len({i.asset for i in inputs}) != len(inputs):
            raise ValueError("an asset appears twice")
        return inputs


MAX_RECORDS = 10**12
Records = Annotated[int, Field(strict=True, ge=0, le=MAX_RECORDS)]
HashStr = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Attest(Msg):
    """Signed by a participant's compute node: what it used and what came out.

    ``records``: for each input of the job this node saw used, the count (a provider its own
    inputs, the consumer every input whose size the protocol showed it); the chain charges an
    input only on a count its provider and every other party stating one agree on.
    ``releases``: the release-key hashes this node knows of (a provider its own, the consumer
    those the protocol showed it); with any, the job is locked, not completed, once everyone has
    attested, and completes when each key is released (``jobs.Release``).
    ``key``: a provider's release key, sent with the job's last missing attestation (the 3-tx
    settlement): accepted only if this attestation completes the job's, the job then locks, and
    SHA-256(key) is this member's attested release hash; the tx then also releases the key (and
    settles the job if it was the last one wanted). Otherwise the whole tx is refused."""

    job: str = JobId
    result_hash: str = Hash
    input_commitments: dict[str, str] = Field(default_factory=dict, description="asset -> commitment used")
    records_used: int = Field(ge=0, le=MAX_RECORDS)
    records: dict[str, Records] = Field(default_factory=dict, max_length=16)
    releases: dict[str, HashStr] = Field(default_factory=dict, max_length=16)
    key: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class Release(Msg):
    """Signed by a provider's compute node once the job is locked: the key whose SHA-256 it
    attested, which opens its last protocol message to the consumer."""

    job: str = JobId
    key: str = Field(pattern=r"^[0-9a-f]{64}$")


class Fail(Msg):
    job: str = JobId
    reason: str = Field(min_length=1, max_length=500)


class Abort(Msg):
    job: str = JobId
    reason: str = Field(min_length=1, max_length=500)
