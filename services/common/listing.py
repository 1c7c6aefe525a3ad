"""The listing contract (version 1): what a data listing says about the data it describes.

It is a wire contract shared by three parties, so it is defined once, here:

- the chain validates ``metadata`` of every ``assets.List`` / ``assets.Update`` with
  :class:`ListingMetadata` (and :func:`level_problems`, the one rule that needs the level);
- the catalog validates a whole draft with :class:`ListingDraft` before a provider signs it,
  and explains every rejection field by field (:func:`explain`);
- the catalog reads the metadata back out of the chain's events with the same model.

Because validators on the chain must agree bit for bit, every rule here is deterministic: no
clock, no locale, no network. Rules that need the catalog's clock or policy advice live in the
catalog (services/catalog/drafts.py). Every value is JSON-native (dates are ISO strings, not
``date`` objects; there are no floats, which the tx encoding refuses), so what the provider
signed, what the chain stores and what the catalog reads are the same bytes.

Changing this contract is a chain upgrade: a new field or vocabulary word means a new
``metadata_version`` accepted by both sides, never an edit of version 1's meaning.
"""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from services.common.privacy import PrivacyBudget

METADATA_VERSION = 1
# The canonical JSON of the metadata, in UTF-8. A tx is at most 64 KiB (services/common/tx.py):
# this leaves 16 KiB for the envelope and the listing's other fields.
MAX_METADATA_BYTES = 48 * 1024

Level = Literal["L1", "L2", "L3", "L4"]
Operation = Literal["raw_download", "psi", "psi_cardinality", "aggregation", "he_scoring", "supply_chain_verification"]
UpdateCycle = Literal["real-time", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly", "irregular", "static"]
ColumnType = Literal["string", "integer", "decimal", "boolean", "date", "datetime", "category", "geo", "binary"]
# How much harm a column's values can do if disclosed; it decides what a real sample may show.
Sensitivity = Literal["public", "internal", "personal", "identifier", "sensitive"]
SampleKind = Literal["synthetic", "real"]

LEVELS: tuple[str, ...] = Level.__args__
OPERATIONS: tuple[str, ...] = Operation.__args__
UPDATE_CYCLES: tuple[str, ...] = UpdateCycle.__args__
SAMPLE_LEVELS = ("L1", "L2")  # a sample may be attached only to public or member-shared data
# A real (not synthetic) sample never shows values of these columns.
UNSHOWABLE = ("personal", "identifier", "sensitive")

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # C0 controls and DEL, except \t and \n
_LINE_BREAK = re.compile(r"[\t\n]")


def _one_line(value: str) -> str:
    if _CONTROL.search(value) or _LINE_BREAK.search(value):
        raise ValueError("must be one line of printable text")
    if not value.strip():
        raise ValueError("must not be blank")
    if value != value.strip():
        raise ValueError("must not start or end with spaces")
    return value


def _text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must be printable text (line breaks and tabs are allowed)")
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _iso_date(value: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a calendar date") from None
    if day.year < 1900:
        raise ValueError("must be in 1900 or later")
    return value


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("must not repeat a value")
    return values


Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,39}$",
                            description="lower-case letters, digits and '-', at most 40")]
IsoDate = Annotated[str, AfterValidator(_iso_date), Field(examples=["2024-01-31"])]
ColumnName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
SampleValue = Annotated[str, Field(max_length=200)] | StrictInt | StrictBool | None
AssetId = Annotated[str, Field(min_length=3, max_length=80, pattern=r"^[a-z0-9][a-z0-9.\-]*$")]


class _Contract(BaseModel):
    """Strict: no coercion ("12" is not 12, true is not 1) and no unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Column(_Contract):
    """One field of the dataset's schema. The data stays home; this only describes it."""

    name: ColumnName
    type: ColumnType
    description: Annotated[str, Field(max_length=500)] = ""
    sensitivity: Sensitivity
    join_key: StrictBool = Field(False, description="a PSI may match on this column; a provider's node refuses "
                                                    "to match on any column its listing does not declare so")

    @model_validator(mode="after")
    def _printable(self) -> "Column":
        if _CONTROL.search(self.description):
            _raise([("description", "must be printable text")])
        return self


class Sample(_Contract):
    """A few rows to show what the data looks like (L1/L2 listings only)."""

    kind: SampleKind = Field(description="synthetic (made up, same shape) or real (rows of the dataset)")
    rows: list[dict[ColumnName, SampleValue]] = Field(min_length=1, max_length=20)


class ListingMetadata(_Contract):
    """The descriptive part of a listing; the chain stores it as signed, in every version."""

    metadata_version: Literal[1] = METADATA_VERSION
    title: Annotated[str, Field(max_length=200), AfterValidator(_one_line)]
    description: Annotated[str, Field(max_length=5000), AfterValidator(_text)]
    industry: Annotated[list[Slug], Field(min_length=1, max_length=3), AfterValidator(_unique)]
    tags: Annotated[list[Slug], Field(max_length=16), AfterValidator(_unique)] = []
    region: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 .\-]{0,59}$",
                                 description="an ISO 3166 code (CN-GD) or a named area, up to 60 characters")]
    data_start: IsoDate
    update_cycle: UpdateCycle
    last_updated: IsoDate
    row_count: Annotated[StrictInt, Field(ge=0, le=10**13)]
    columns: list[Column] = Field(min_length=1, max_length=256, description="the dataset's schema")
    licence: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+\-]{0,79}$",
                                  description="an SPDX id (CC-BY-4.0) or the association's licence id")]
    licence_url: Annotated[str, Field(pattern=r"^https?://[^\s]{1,290}$")] | None = None
    usage_terms: Annotated[str, Field(max_length=3000), AfterValidator(_text)]
    contact: Annotated[str, Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}$")] | None = None
    sample: Sample | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ListingMetadata":
        _raise(metadata_problems(self))
        return self


def _raise(problems: list[tuple[str, str]]) -> None:
    """One ValueError carrying every problem, one ``path: message`` per line (see ``explain``)."""
    if problems:
        raise ValueError("\n".join(f"{path}: {message}" if path else message for path, message in problems))


def metadata_problems(md: ListingMetadata) -> list[tuple[str, str]]:
    """Rules between fields of the metadata itself (deterministic), as (path, message) with
    paths relative to the metadata, e.g. ``sample.rows[0]``."""
    problems: list[tuple[str, str]] = []
    names = [c.name for c in md.columns]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            problems.append((f"columns[{i}].name", f"column {name!r} is defined twice"))
        seen.add(name)
    for i, column in enumerate(md.columns):
        if column.join_key and column.sensitivity == "sensitive":
            problems.append((f"columns[{i}].join_key", "a sensitive column cannot be a join key"))
    if md.last_updated < md.data_start:  # ISO dates compare as strings
        problems.append(("last_updated", "must not be before data_start"))
    if md.sample is not None:
        sensitivity = {c.name: c.sensitivity for c in md.columns}
        for i, row in enumerate(md.sample.rows):
            unknown = sorted(set(row) - set(sensitivity))
            if unknown:
                problems.append((f"sample.rows[{i}]", f"names no column of the schema: {', '.join(unknown)}"))
            if md.sample.kind == "real":
                shown = sorted(k for k in row if sensitivity.get(k) in UNSHOWABLE and row[k] is not None)
                if shown:
                    problems.append((f"sample.rows[{i}]", "a real sample must not show personal, identifier "
                                     f"or sensitive columns ({', '.join(shown)}); leave them null or use a synthetic sample"))
    size = len(canonical_json(md.model_dump()))
    if size > MAX_METADATA_BYTES:
        problems.append(("", f"is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}"))
    return problems


def level_problems(level: str | None, md: ListingMetadata | None) -> list[tuple[str, str]]:
    """Rules between the metadata and the listing's level (deterministic; the chain runs them).
    Paths are relative to the metadata."""
    if md is not None and md.sample is not None and level is not None and level not in SAMPLE_LEVELS:
        return [("sample", f"a sample may be attached only to L1 or L2 listings; this one is {level}")]
    return []


class Price(_Contract):
    """Integer credits; how the chain turns it into a charge is services/consensus/pricing.py.

    - ``free``; ``fixed``: ``amount`` per job; ``per_record``: ``amount`` per record the provider
      attests it used;
    - ``subscription``: ``amount`` buys ``period_s`` of jobs under one grant (a pass bound to it);
    - ``dynamic``: ``amount`` per job times a demand multiplier, computed on chain from recent
      use of the asset (bounded), so every validator charges the same and a consumer can quote it.
    """

    model: Literal["free", "fixed", "per_record", "subscription", "dynamic"]
    amount: Annotated[StrictInt, Field(ge=0, le=10**12)] = 0
    period_s: Annotated[StrictInt, Field(ge=3600, le=366 * 86_400)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Price":
        if self.model == "free" and self.amount != 0:
            _raise([("amount", "a free listing has amount 0")])
        if (self.model == "subscription") != (self.period_s is not None):
            _raise([("period_s", "a subscription has a period_s, and only a subscription")])
        return self


class ListingDraft(_Contract):
    """A whole listing as a provider drafts it: the payload of ``assets.List`` / ``assets.Update``.

    The chain enforces level, operations, commitment, price and group size itself; the catalog
    checks them here too, so that a provider learns every problem before signing.
    """

    id: AssetId
    level: Level
    operations: Annotated[list[Operation], Field(min_length=1, max_length=6), AfterValidator(_unique)]
    commitment: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$",
                                     description="SHA-256 Merkle root of the canonical rows, 64 lower-case hex")]
    price: Price
    min_group_size: Annotated[StrictInt, Field(ge=1, le=10**6)] = 1
    privacy_budget: PrivacyBudget | None = None  # services/common/privacy.py
    metadata: ListingMetadata

    @model_validator(mode="after")
    def _level_rules(self) -> "ListingDraft":
        _raise([(f"metadata.{path}", message) for path, message in level_problems(self.level, self.metadata)])
        return self

    def payload(self) -> dict[str, Any]:
        """The canonical tx payload: operations sorted (as the chain stores them), absent
        optional fields left out, defaults written out."""
        body = self.model_dump(mode="json", exclude_none=True)
        body["operations"] = sorted(body["operations"])
        return body


def canonical_json(value: Any) -> bytes:
    """The encoding of services/common/tx.py (sorted keys, no spaces, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# -- explaining rejections ------------------------------------------------------------------------

_RULE = re.compile(r"^(?:(?P<path>[A-Za-z_][\w\[\]]*(?:\.[A-Za-z_][\w\[\]]*)*): )?(?P<message>.+)$", re.S)


def field_path(loc: tuple[Any, ...]) -> str:
    """('metadata', 'columns', 2, 'name') -> 'metadata.columns[2].name'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


PATTERN_HELP = {
    "id": "must be 3 to 80 lower-case letters, digits, '.' or '-', starting with a letter or digit",
    "commitment": "must be 64 lower-case hex digits (the SHA-256 Merkle root of the dataset)",
    "industry": "must be lower-case letters, digits and '-' (at most 40), e.g. finance",
    "tags": "must be lower-case letters, digits and '-' (at most 40), e.g. anti-fraud",
    "region": "must be an ISO 3166 code (CN-GD) or a named area: letters, digits, spaces, '.', '-' (at most 60)",
    "name": "must be a column name: a letter or '_', then letters, digits or '_' (at most 64)",
    "licence": "must be a licence id such as CC-BY-4.0 (letters, digits, '.', '+', '-')",
    "licence_url": "must be an http(s) URL without spaces",
    "contact": "must be an email address",
}


def _join(base: str, path: str) -> str:
    return f"{base}.{path}" if base and path else base or path


def explain(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[dict[str, str]]:
    """Every error of a validation as ``{field, message}``, the field as a path from the
    listing's root (``metadata.columns[2].sensitivity``); input values are never echoed."""
    problems = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        field, message = field_path(prefix + tuple(err["loc"])), err["msg"]
        if err["type"] == "extra_forbidden":
            problems.append({"field": field, "message": f"is not a field of listing contract v{METADATA_VERSION}"})
        elif err["type"] == "missing":
            problems.append({"field": field, "message": "is required"})
        elif err["type"] == "string_pattern_mismatch":
            names = [p for p in err["loc"] if isinstance(p, str)]
            problems.append({"field": field, "message": PATTERN_HELP.get(names[-1] if names else "", message)})
        elif err["type"] == "value_error":
            # A rule raised by ``_raise``: one "path: message" per line, paths relative to loc.
            for line in message.removeprefix("Value error, ").split("\n"):
                match = _RULE.match(line)
                problems.append({"field": _join(field, match["path"] or "") or "payload", "message": match["message"]})
        else:
            problems.append({"field": field or "payload", "message": message})
    return problems


def example_metadata(title: str = "Mobile subscribers by district", **changes: Any) -> dict[str, Any]:
    """A metadata dict that validates: for documentation, the SDK and tests."""
    md: dict[str, Any] = {
        "title": title,
        "description": "Monthly active mobile subscribers with tenure and plan type, one row per subscriber.",
        "industry": ["telecom"],
        "tags": ["subscribers", "marketing"],
        "region": "CN-GD",
        "data_start": "2021-01-01",
        "update_cycle": "monthly",
        "last_updated": "2025-06-30",
        "row_count": 1_200_000,
        "columns": [
            {"name": "phone_hash", "type": "string", "description": "salted SHA-256 of the phone number",
             "sensitivity": "identifier", "join_key": True},
            {"name": "district", "type": "category", "description": "home district", "sensitivity": "internal",
             "join_key": False},
            {"name": "tenure_months", "type": "integer", "description": "months as a subscriber",
             "sensitivity": "personal", "join_key": False},
        ],
        "licence": "rdx-member-data-1.0",
        "usage_terms": "Privacy-preserving computation only; results may not be re-identified.",
    }
    md.update(changes)
    return md
