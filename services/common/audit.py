"""The audit trail's record format and hash chain, shared by the gateway (which writes it) and the
verifier (`rdx audit verify`), which must not have to trust the gateway.

Each record's hash covers its canonical fields and the previous record's hash, so changing,
removing or reordering any record changes the hash of every later one. The gateway anchors the
hash of the last record of each batch on chain (``audit.Anchor``); a verifier recomputes the
chain from the stored records and compares it with the anchors.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

GENESIS = "0" * 64


class AuditRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int
    ts: float
    request_id: str
    member: str | None
    role: str | None
    key_id: str | None
    method: str
    route: str
    asset: str | None = None
    job: str | None = None
    decision: str  # allow | deny | error
    reason: str
    status: int
    latency_ms: float
    prev_hash: str
    hash: str = ""

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude={"hash"})


def event_id(instance: str, seq: int) -> str:
    """The id of record ``seq`` on ``rdx.audit.v1``. Each gateway replica keeps its own trail (its own
    ``seq`` and hash chain) in its own database, named by a random ``instance`` id made with that
    database: replicas never collide, and a record published again keeps its id."""
    return f"audit/{instance}/{seq}"


def record_hash(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of every field but ``hash`` (which includes ``prev_hash``)."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_chain(records: list[AuditRecord], prev_hash: str) -> tuple[bool, str, int | None]:
    """Recompute the chain over consecutive records; returns (ok, last hash, first bad seq)."""
    current = prev_hash
    for r in records:
        if r.prev_hash != current or record_hash(r.body()) != r.hash:
            return False, current, r.seq
        current = r.hash
    return True, current, None


def verify_against_anchors(records: list[AuditRecord], anchors: list[dict]) -> list[str]:
    """Problems found when the stored records are checked against the on-chain anchors.

    ``records`` must be every record from the first anchor's ``first_seq`` on (the verifier
    fetches them); each anchor's digest must equal the recomputed hash of its last record.
    """
    problems: list[str] = []
    by_seq = {r.seq: r for r in records}
    ordered = sorted(anchors, key=lambda a: a["first_seq"])
    prev: str | None = GENESIS if ordered and ordered[0]["first_seq"] == 1 else None
    for anchor in ordered:
        batch = [by_seq.get(s) for s in range(anchor["first_seq"], anchor["last_seq"] + 1)]
        if any(r is None for r in batch):
            missing = [s for s, r in zip(range(anchor["first_seq"], anchor["last_seq"] + 1), batch) if r is None]
            problems.append(f"records missing from the store: {missing[:10]}")
            prev = None
            continue
        start = batch[0].prev_hash if prev is None else prev
        ok, last_hash, bad = verify_chain(batch, start)
        if not ok:
            problems.append(f"record {bad} was altered (its hash chain breaks)")
        elif last_hash != anchor["digest"]:
            problems.append(f"records {anchor['first_seq']}-{anchor['last_seq']} do not match the anchor "
                            f"at height {anchor['height']}")
        prev = last_hash
    return problems
