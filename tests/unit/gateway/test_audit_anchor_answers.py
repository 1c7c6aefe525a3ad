"""The gateway's audit trail against a chain node that answers what it likes: the anchors it reads
at a start (``restore_anchored``) and before each anchor (``AuditShipper._continues``). A lying
node can make the gateway anchor nothing; it cannot make it take records or anchor a fork."""

from __future__ import annotations

import pytest

from services.common.identity import Identity
from services.gateway import audit
from services.gateway.audit import AuditLog, AuditShipper, restore_anchored
from services.gateway.db import SqliteDatabase

CALL = dict(ts=1.0, request_id="r", member="bank", role="analyst", key_id="k", method="GET", route="/v1/listings",
            decision="allow", reason="ok", status=200, latency_ms=1.0)
UNREACHABLE = "127.0.0.1:1"  # a Kafka nobody listens on: reading it would fail the test's time, not pass it


class LyingChain:
    chain_id = "rdx-test"

    def __init__(self, answers: dict):
        self.answers, self.broadcasts = answers, []

    async def query(self, path):
        return self.answers.get(path)

    async def broadcast(self, raw):
        self.broadcasts.append(raw)
        return {"code": 0}


@pytest.mark.parametrize("answers", [
    {"/audit/last": 5, "/audit/anchors/000000000005": ["not", "an", "anchor"]},
    {"/audit/last": 5, "/audit/anchors/000000000005": {"no": "digest"}},
    {"/audit/last": 5},  # an anchor the node says is not there
    {"/audit/last": "5"},  # not a number
])
async def test_a_start_takes_nothing_back_on_an_anchor_answer_it_cannot_walk_from(answers, tmp_path, caplog):
    trail = await AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
    await trail.append(CALL)
    assert await restore_anchored(trail, LyingChain(answers), UNREACHABLE, timeout_s=5) == []
    assert await trail.last_seq() == 1
    assert "rdx.audit.v1 could not be read" not in caplog.text  # decided before any Kafka read


@pytest.mark.parametrize("anchor", [["junk"], {"digest": "00" * 32}, None])
async def test_a_shipper_does_not_anchor_over_an_anchor_it_does_not_hold(anchor, tmp_path):
    trail = await AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
    for _ in range(3):
        await trail.append(CALL)
    chain = LyingChain({"/audit/last": 2, "/audit/anchors/000000000002": anchor})
    shipper = AuditShipper(trail, producer=None, chain=chain, identity=Identity.generate("association.node"),
                           every_s=1.0, max_records=100)
    await shipper._anchor()
    assert chain.broadcasts == [] and audit.DIVERGED._value.get() == 1
