"""Listing drafts: validation that explains every problem field by field, and the unsigned tx.

Publishing is a chain transaction signed by the provider with its own key; the catalog never
holds a member's key. It checks a draft before it is signed (the same contract the chain
applies, services/common/listing.py, plus rules that need the catalog's clock, the read model
or the classification policy), hands back the canonical unsigned transaction to sign, and
can relay the signed transaction to the chain after checking it again.

The rules beyond the contract (the chain does not enforce these, so they are advice that
stops a useless or harmful listing before it is on chain forever):
- every offered operation must be possible at the listing's level under the policy in force
  (an L3 listing offering raw_download could never be used that way);
- data_start and last_updated must not be in the future;
- assets.List needs a new id; assets.Update needs a listing that is listed and owned by the
  signer (when the read model knows it).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import ValidationError

from services.common import policy as policies
from services.common.listing import LEVELS, OPERATIONS, ListingDraft, ListingMetadata, explain, level_problems
from services.common.tx import Tx

LIST, UPDATE = "assets.List", "assets.Update"
TX_TYPES = (LIST, UPDATE)


@dataclass
class Verdict:
    draft: ListingDraft | None
    problems: list[dict[str, str]] = field(default_factory=list)
    approvals: dict[str, list[str]] = field(default_factory=dict)  # operation -> approvals a grant needs

    @property
    def valid(self) -> bool:
        return self.draft is not None and not self.problems

    def add(self, field_: str, message: str) -> None:
        problem = {"field": field_, "message": message}
        if problem not in self.problems:
            self.problems.append(problem)


@dataclass(frozen=True)
class Existing:
    """What the read model knows about a listing id (None: unknown)."""

    owner: str
    status: str
    version: int


def validate(body: Any, *, today: date, policy: policies.Policy, tx_type: str = LIST, signer: str | None = None,
             existing: Existing | None = None) -> Verdict:
    if not isinstance(body, dict):
        return Verdict(None, [{"field": "listing", "message": "must be a JSON object (the assets.List payload)"}])
    verdict = Verdict(None)
    try:
        verdict.draft = ListingDraft.model_validate(body)
    except ValidationError as exc:
        for problem in explain(exc):
            verdict.add(problem["field"], problem["message"])
        _partial_rules(body, verdict)
    _catalog_rules(body, verdict, today=today, policy=policy, tx_type=tx_type, signer=signer, existing=existing)
    if verdict.problems:
        verdict.draft = None
    return verdict


def _partial_rules(body: dict[str, Any], verdict: Verdict) -> None:
    """The rule between level and metadata, when both parts are valid on their own but the
    draft as a whole is not (pydantic runs a model's own rules only once its fields pass)."""
    if body.get("level") not in LEVELS:
        return
    try:
        metadata = ListingMetadata.model_validate(body.get("metadata"))
    except ValidationError:
        return
    for path, message in level_problems(body["level"], metadata):
        verdict.add(f"metadata.{path}", message)


def _catalog_rules(body: dict[str, Any], verdict: Verdict, *, today: date, policy: policies.Policy, tx_type: str,
                   signer: str | None, existing: Existing | None) -> None:
    level, operations, asset_id = body.get("level"), body.get("operations"), body.get("id")
    if level in LEVELS and isinstance(operations, list):
        owner = signer or "provider"
        asset = policies.AssetView(str(asset_id), level, owner, tuple(o for o in operations if isinstance(o, str)))
        consumer = policies.Caller("a-consumer", "member_admin", ("consumer",))
        for i, op in enumerate(operations):
            if not isinstance(op, str) or op not in OPERATIONS:
                continue
            try:
                verdict.approvals[op] = list(policy.approvals_needed(consumer, asset, [op]))
            except policies.Forbidden:
                verdict.add(f"operations[{i}]", f"{op} is never allowed on {level} data under the classification "
                                                f"policy v{policy.version}; no grant could ever use it")
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for name in ("data_start", "last_updated"):
            value = metadata.get(name)
            if isinstance(value, str) and len(value) == 10 and value > today.isoformat():
                verdict.add(f"metadata.{name}", f"must not be in the future (today is {today.isoformat()})")
    if isinstance(asset_id, str):
        if tx_type == LIST and existing is not None:
            verdict.add("id", f"{asset_id} is already a listing (version {existing.version}, {existing.status}); "
                              "change it with assets.Update")
        elif tx_type == UPDATE and existing is not None:
            if existing.status != "listed":
                verdict.add("id", f"{asset_id} is {existing.status}; only a listed listing can be updated")
            if signer is not None and existing.owner != signer:
                verdict.add("id", f"{asset_id} belongs to {existing.owner}; only its owner may update it")
        elif tx_type == UPDATE and existing is None:
            verdict.add("id", f"{asset_id} is not a listing the catalog knows; publish it with assets.List")


def unsigned_tx(draft: ListingDraft, *, tx_type: str, signer: str, chain_id: str, nonce: int) -> dict[str, Any]:
    """The transaction to sign: the envelope without ``sig``, and the exact bytes to sign
    (canonical JSON of every field but ``sig``, services/common/tx.py)."""
    tx = Tx(chain_id=chain_id, type=tx_type, signer=signer, nonce=nonce, payload=draft.payload())
    signing = tx.signing_bytes()
    return {
        "tx": tx.model_dump(exclude={"sig"}),
        "sign_bytes": base64.b64encode(signing).decode(),
        "signing": "Ed25519 over sign_bytes (canonical JSON of the envelope without sig) with the signer's "
                   "registered key; put the base64 signature in `sig` and submit the whole envelope",
    }
