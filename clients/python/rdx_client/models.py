"""Typed answers of the gateway. Parsing is strict (a string where a number is promised is
refused, not coerced); records the chain grows keep their extra fields (``model_extra``)."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="allow")


class TxResult(Model):
    """A transaction committed with code 0. ``events`` are the block's events of it (empty when
    the result was learnt from ``GET /v1/tx/{hash}`` after the write's answer was lost)."""

    tx_hash: str
    height: int
    events: list[dict[str, Any]] = Field(default_factory=list)


class TxStatus(Model):
    tx_hash: str
    status: Literal["pending", "committed"]
    height: int | None = None
    code: int | None = None
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "committed" and self.code == 0


class Account(Model):
    id: str
    member: str
    kind: str
    public_key: str
    nonce: int


class Grant(Model):
    """An access request or grant as the chain records it."""

    id: str
    asset: str
    consumer: str
    provider: str
    operations: list[str]
    status: str


class Job(Model):
    """A job as the chain records it."""

    id: str
    type: str
    consumer: str
    participants: list[str]
    status: str
    result_hash: str | None = None
    ended_reason: str | None = None
    ended_height: int | None = None
    attestations: dict[str, Any] = Field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status not in ("running", "locked")


class Page(Model, Generic[T]):
    """One page of a list; ``next`` is the ``after`` of the next page (None: the last page)."""

    items: list[T]
    next: str | None = None


class Provider(Model):
    id: str
    name: str | None = None


class ListingSummary(Model):
    id: str
    title: str
    provider: Provider
    level: str
    operations: list[str]
    price: dict[str, Any]
    status: str
    version: int


class SearchResults(Model):
    total: int
    items: list[ListingSummary]
    next_cursor: str | None = None
    facets: dict[str, Any] | None = None


class Listing(Model):
    id: str
    status: str
    version: int
    provider: Provider
    level: str
    operations: list[str]
    commitment: str
    price: dict[str, Any]
    min_group_size: int | None = None
    metadata: dict[str, Any]


class QuoteLine(Model):
    asset: str
    charge: int
    cover: int


class Quote(Model):
    lines: list[QuoteLine]
    total: int
    records: int
    max_price: int = Field(description="the least a job's max_price must be")


class StatementEntry(Model):
    event_id: str
    height: int
    time: float
    amount: int
    kind: str
    counterparty: str | None = None
    job: str | None = None
    reference: str | None = None


class Statement(Model):
    member: str
    since: float
    until: float
    opening_balance: int
    closing_balance: int
    totals_by_kind: dict[str, int]
    entries: list[StatementEntry]


class InvoiceLine(Model):
    job: str
    asset: str
    provider: str
    charge: int
    height: int
    time: float


class Invoice(Model):
    member: str
    since: float
    until: float
    lines: list[InvoiceLine]
    listed_charges: int
    net_paid: int


class UsageLine(Model):
    asset: str
    counterparty: str
    jobs: int
    charged: int


class Usage(Model):
    member: str
    as_provider: list[UsageLine]
    as_consumer: list[UsageLine]


class Balance(Model):
    """A member's balance as billing's ledger (the read model of the chain's events) has it."""

    member: str
    balance: int
    as_of: float


class ApiKey(Model):
    key_id: str
    member: str
    role: str
    created_at: float
    revoked_at: float | None = None


class NewApiKey(ApiKey):
    token: str = Field(repr=False, description="shown once")


class Webhook(Model):
    id: str
    member: str
    url: str
    events: list[str]
    created_at: float


class NewWebhook(Webhook):
    secret: str = Field(repr=False, description="the Standard Webhooks signing secret, shown once")


class Delivery(Model):
    id: str
    webhook: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: float
    next_attempt_at: float | None = None
    delivered_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None


class Replayed(Model):
    replayed: int


class Dataset(Model):
    """A dataset on the member's own compute node: what it is and its commitment, never rows."""

    id: str
    asset: str | None = None
    rows: int | None = None
    commitment: str | None = None
    columns: list[Any] = Field(default_factory=list)
    error: str | None = None


class SealedResult(Model):
    """A job's result as the member's own node hands it out: sealed to that node's key."""

    job: str
    type: str
    result_hash: str | None = None
    sealed_to: str
    envelope: str


class OpenedResult(Model):
    """A sealed result opened with the node key, its commitment checked."""

    job: str
    type: str
    member: str
    result: Any
    salt: str
    commitment: str
