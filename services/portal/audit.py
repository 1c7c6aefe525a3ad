"""The audit page's check: which of the records shown are covered by an anchor on chain, and whether
they hash to it. The records and the anchors both come from the gateway (the portal talks to nothing
else), so this finds records changed, dropped or reordered in the gateway's store after they were
anchored; it cannot find a gateway that reports other anchors than the chain holds (docs/portal.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from services.common.audit import AuditRecord, record_hash, verify_chain

# What the page says of an anchor (and of each record under it).
VERIFIED, MISMATCH, PARTLY_SHOWN, NOT_ANCHORED = "verified", "mismatch", "partly_shown", "not_anchored"


class BadTrail(ValueError):
    """The gateway's answer is not a list of audit records and anchors."""


@dataclass(frozen=True)
class AnchorCheck:
    first_seq: int
    last_seq: int
    digest: str
    height: int
    time: float
    verdict: str
    bad: int | None = None  # MISMATCH: the first record whose hash or link breaks
    missing: tuple[int, ...] = ()  # MISMATCH: records of the batch the gateway did not give


@dataclass(frozen=True)
class RecordRow:
    record: AuditRecord
    intact: bool  # its hash is the hash of its own fields
    verdict: str  # its anchor's verdict, or NOT_ANCHORED


def parse_records(records: object) -> list[AuditRecord]:
    try:
        return [AuditRecord(**r) for r in records]  # type: ignore[union-attr]
    except (TypeError, ValueError, ValidationError):
        raise BadTrail("the gateway's audit records are not in the expected form") from None


def parse_anchors(anchors: object) -> list[dict]:
    try:
        return [{"first_seq": int(a["first_seq"]), "last_seq": int(a["last_seq"]), "digest": str(a["digest"]),
                 "height": int(a["height"]), "time": float(a["time"])} for a in anchors]  # type: ignore[union-attr]
    except (TypeError, KeyError, ValueError):
        raise BadTrail("the gateway's audit anchors are not in the expected form") from None


def page_end(after: int, anchors: list[dict], size: int, most: int) -> int:
    """The last record of the page that starts after record ``after``: the end of an anchored batch,
    so that its batches are whole on the page and can be checked (a batch may hold hundreds of
    records): the last batch end within ``size`` records, else the first within ``most``, else
    ``size`` records on (no batch ends in reach: records not anchored yet, or a larger batch)."""
    ends = sorted(a["last_seq"] for a in anchors if after < a["last_seq"] <= after + most)
    within = [e for e in ends if e <= after + size]
    return within[-1] if within else ends[0] if ends else after + size


def check(records: list[AuditRecord], anchors: list[dict], after: int | None = None
          ) -> tuple[list[AnchorCheck], list[RecordRow]]:
    """``records``: the records the gateway gave after record ``after``, in order; ``anchors``:
    those whose range may touch them. An anchor whose range lies within the page (from ``after`` + 1
    to the last record shown) is checked: a record of its range missing is a mismatch, else the
    batch's hash chain is recomputed from its first record's ``prev_hash`` and its last hash compared
    with the digest on chain. An anchor reaching past the page is not checked here, nor the link
    from the first record shown to the one before it."""
    by_seq = {r.seq: r for r in records}
    high = records[-1].seq if records else -1
    low = after + 1 if after is not None else records[0].seq if records else 0
    checks, verdict_of = [], {}
    for a in sorted(anchors, key=lambda a: a["first_seq"]):
        if a["last_seq"] < low or a["first_seq"] > high:
            continue
        batch = [by_seq.get(seq) for seq in range(a["first_seq"], a["last_seq"] + 1)]
        missing = [seq for seq, r in zip(range(a["first_seq"], a["last_seq"] + 1), batch) if r is None]
        bad = None
        if a["first_seq"] < low or a["last_seq"] > high:
            verdict = PARTLY_SHOWN
        elif missing:
            verdict = MISMATCH
        else:
            ok, last_hash, bad = verify_chain(batch, batch[0].prev_hash)
            if ok and last_hash != a["digest"]:
                bad = a["last_seq"]
            verdict = VERIFIED if bad is None else MISMATCH
        checks.append(AnchorCheck(a["first_seq"], a["last_seq"], a["digest"], a["height"], a["time"], verdict,
                                  bad, tuple(missing[:10]) if verdict == MISMATCH else ()))
        for seq in range(max(a["first_seq"], low), min(a["last_seq"], high) + 1):
            verdict_of[seq] = verdict
    rows = [RecordRow(r, record_hash(r.body()) == r.hash, verdict_of.get(r.seq, NOT_ANCHORED)) for r in records]
    return checks, rows
