"""Anchors are contiguous: each starts right after the previous one, so no record can be dropped
from the middle of the trail without breaking the chain of anchors."""

from __future__ import annotations

from services.common.tx import Code
from services.consensus.audit import messages as m
from services.consensus.context import Context, Rejected
from services.consensus.members.keeper import ASSOCIATION, MembersKeeper


def anchor(ctx: Context, msg: m.Anchor) -> None:
    owner = MembersKeeper(ctx).signing_node(ctx.signer)
    if ASSOCIATION not in owner["roles"]:
        raise Rejected(Code.UNAUTHORIZED, "only the association's gateway anchors audit batches")
    last = ctx.store.get("audit/last") or 0
    if msg.first_seq != last + 1:
        raise Rejected(Code.CONFLICT, f"the next anchor must start at record {last + 1}")
    ctx.store.set(f"audit/anchors/{msg.last_seq:012d}", {"first_seq": msg.first_seq, "last_seq": msg.last_seq,
                                                         "digest": msg.digest, "height": ctx.height,
                                                         "time": ctx.time})
    ctx.store.set("audit/last", msg.last_seq)
    ctx.emit("AuditAnchored", "audit", first_seq=msg.first_seq, last_seq=msg.last_seq, digest=msg.digest)


HANDLERS = {"audit.Anchor": (m.Anchor, anchor)}
