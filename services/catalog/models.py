"""The catalog API's request and response schemas (they make its OpenAPI document).

Responses are described loosely where the listing contract already is the schema: a
listing's ``metadata`` is exactly :class:`services.common.listing.ListingMetadata`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    field: str = Field(description="path from the request's root, e.g. metadata.columns[2].sensitivity")
    message: str


class DraftRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["assets.List", "assets.Update"] = "assets.List"
    signer: str | None = Field(None, max_length=64, description="the member account that will sign")
    nonce: int | None = Field(None, ge=1, description="the signer's next nonce (read from the chain if absent)")
    listing: Any = Field(description="the tx payload: id, level, operations, commitment, price, min_group_size, "
                                     "metadata (validated by the catalog, so any JSON is accepted here)")


class ValidateResponse(BaseModel):
    valid: bool
    problems: list[Problem]
    approvals: dict[str, list[str]] = Field(description="for each offered operation, whose approval a grant needs")
    payload: dict[str, Any] | None = Field(description="the canonical tx payload, when valid")
    policy_version: int


class UnsignedTx(BaseModel):
    chain_id: str
    type: str
    signer: str
    nonce: int
    payload: dict[str, Any]


class TxResponse(BaseModel):
    valid: Literal[True]
    approvals: dict[str, list[str]]
    tx: UnsignedTx
    sign_bytes: str = Field(description="base64 of the exact bytes to sign (canonical JSON of tx)")
    signing: str


class SignedTx(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chain_id: str
    type: str
    signer: str
    nonce: int
    payload: dict[str, Any]
    sig: str


class SubmitResponse(BaseModel):
    tx_hash: str
    height: int | None
    committed: bool


class Proof(BaseModel):
    height: int
    tx_hash: str | None
    event_id: str | None = None
    committed_at: str | None = None


class FacetValue(BaseModel):
    value: str
    count: int
    selected: bool


class Highlights(BaseModel):
    title: str | None
    description: str | None


class Party(BaseModel):
    id: str
    name: str | None


class SearchItem(BaseModel):
    id: str
    title: str
    provider: Party
    level: str
    operations: list[str]
    region: str
    industry: list[str]
    tags: list[str]
    update_cycle: str
    price: dict[str, Any]
    row_count: int
    version: int
    status: str
    proof: Proof
    score: float | None = Field(description="bm25 relevance (higher is better) when searching text")
    highlights: Highlights | None = Field(description="HTML-escaped text with <mark> around matches")


class SearchResponse(BaseModel):
    total: int
    items: list[SearchItem]
    next_cursor: str | None
    facets: dict[str, list[FacetValue]] | None
    sort: str


class VersionRecord(BaseModel):
    id: str | None = None
    version: int
    event: str
    status: str
    proof: Proof
    level: str | None = None
    operations: list[str] | None = None
    commitment: str | None = None
    price: dict[str, Any] | None = None
    min_group_size: int | None = None
    metadata: dict[str, Any] | None = None


class Counts(BaseModel):
    total: int
    active: int


class Usage(BaseModel):
    jobs: int
    completed: int


class ListingDetail(BaseModel):
    id: str
    status: str
    searchable: bool
    version: int
    provider: Party
    level: str
    operations: list[str]
    commitment: str
    price: dict[str, Any]
    min_group_size: int
    metadata: dict[str, Any]
    metadata_valid: bool
    proof: Proof
    listed: Proof
    versions: list[VersionRecord]
    grants: Counts
    usage: Usage
