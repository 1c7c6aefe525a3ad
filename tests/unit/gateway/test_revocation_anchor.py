"""A key revocation's response waits for its audit record's anchor (``AuditShipper.anchored_through``):
a gateway restored from a backup takes back only anchored records, so an unanchored revocation
would come back to life with the restored key store. The wait asks the shipper for a turn now,
counts any replica's anchor, and never fails the response: a chain away or lying ends it at its
timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common.chain import ChainError
from services.common.identity import Identity
from services.gateway.audit import AuditLog, AuditShipper
from services.gateway.db import SqliteDatabase


class Chain:
    chain_id = "rdx-test"

    def __init__(self, answers):
        self.answers, self.asked = list(answers), 0

    async def query(self, path):
        assert path == "/audit/last"
        self.asked += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def shipper(tmp_path, chain, identity=True) -> AuditShipper:
    trail = await AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
    return AuditShipper(trail, producer=None, chain=chain,
                        identity=Identity.generate("association.node") if identity else None,
                        every_s=60.0, max_records=100)


async def test_it_returns_once_the_chain_anchored_the_record(tmp_path):
    chain = Chain([None, 3, 6])  # nothing anchored, then up to 3, then (another replica's turn, say) up to 6
    s = await shipper(tmp_path, chain)
    assert await s.anchored_through(5, timeout=5) is True
    assert chain.asked == 3 and s._wake.is_set()  # a turn was asked for


@pytest.mark.parametrize("answer", [ChainError("unreachable"), "5", ["junk"], {"last": 9}, None, 4])
async def test_a_chain_away_or_lying_ends_the_wait_at_its_timeout_without_an_error(answer, tmp_path):
    s = await shipper(tmp_path, Chain([answer]))
    began = time.monotonic()
    assert await s.anchored_through(5, timeout=0.3) is False
    assert 0.3 <= time.monotonic() - began < 1.5


async def test_a_gateway_that_anchors_nothing_does_not_wait(tmp_path):
    chain = Chain([0])
    s = await shipper(tmp_path, chain, identity=False)
    assert await s.anchored_through(1, timeout=5) is False and chain.asked == 0


async def test_a_wake_gives_a_turn_at_once_instead_of_after_every_s(tmp_path):
    s = await shipper(tmp_path, Chain([0]), identity=False)
    turns = []

    async def publish_some():
        turns.append(time.monotonic())

    s._publish_some = publish_some
    stop = asyncio.Event()
    task = asyncio.ensure_future(s.run(stop))
    await asyncio.sleep(0.1)
    assert len(turns) == 1  # the first turn; the next one is every_s (60 s) away
    s._wake.set()
    await asyncio.sleep(0.1)
    assert len(turns) == 2
    stop.set()
    await asyncio.wait_for(task, 2)
