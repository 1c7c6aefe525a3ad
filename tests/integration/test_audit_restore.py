"""A gateway's audit trail restored from a backup, on a real chain and broker (the trust boundaries'
"a restored backup must fail loudly").

The chain anchored records the restored database lacks. At its start the gateway takes them back
from rdx.audit.v1, found from the anchor's digest down, so that a forged record there changes
nothing; a trail that cannot be made whole anchors nothing more and says so (gauge, error log).
Before this, such a gateway numbered new records after its old tip and later anchored them: the
chain's anchors then vouched for two different trails.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer

from conftest import running_chain
from services.common.audit import record_hash, verify_against_anchors
from services.common.chain import ChainClient
from services.common.events import AUDIT, Event
from services.common.identity import Identity
from services.common.kafka import EventProducer
from services.gateway import audit
from services.gateway.audit import AuditLog, AuditShipper, restore_anchored, to_event
from services.gateway.db import SqliteDatabase

CALL = dict(ts=1.0, request_id="r", member="bank", role="analyst", key_id="k", method="GET", route="/v1/listings",
            decision="allow", reason="ok", status=200, latency_ms=1.0)


@pytest.fixture(scope="module")
def chain(toolchain, kafka, tmp_path_factory):
    with running_chain(toolchain, kafka, tmp_path_factory.mktemp("audit-chain")) as c:
        yield c


async def _calls(shipper: AuditShipper, n: int, **fields) -> None:
    """``n`` calls recorded and published, then one turn of anchoring."""
    for _ in range(n):
        shipper.submit(await shipper.log.append(CALL | fields))
    await shipper._publish_some()
    await shipper._anchor()


async def _anchors(client: ChainClient) -> list[dict]:
    return list((await client.query("/audit/anchors/") or {}).values())


@asynccontextmanager
async def _anchoring(chain, kafka):
    """A chain client, a producer, and a gateway key the chain takes anchors from."""
    gateway = Identity.generate("association.node")
    producer = EventProducer(kafka.bootstrap, "gateway")
    await producer.start()
    try:
        async with ChainClient(chain.rpc_url, chain.chain_id) as client:
            await client.submit(chain.association, "members.SetNode",
                                {"node": {"public_key": gateway.public_key, "endpoint": "127.0.0.1:8000"}})
            yield client, producer, gateway
    finally:
        await producer.stop()


async def test_a_restored_trail_takes_the_anchored_records_back_and_anchors_on(chain, kafka, tmp_path, caplog):
    async with _anchoring(chain, kafka) as (client, producer, gateway):
        trail = await AuditLog.open(SqliteDatabase(tmp_path / "audit.sqlite"))
        shipper = AuditShipper(trail, producer, client, gateway, every_s=1.0, max_records=100)
        await _calls(shipper, 3)  # records 1-3, anchored
        with sqlite3.connect(tmp_path / "backup.sqlite") as copy:
            trail.db.conn.backup(copy)  # SQLite's online backup of the live database
        for _ in range(3):
            await _calls(shipper, 3)  # records 4-12, anchored after each three: up to 6, 9, 12
        assert await client.query("/audit/last") == 12
        # Whoever may write to the topic forges a record 4 of this trail that follows record 3 ...
        forged = (await trail.query(after_seq=3, limit=1))[0].model_copy(update={"member": "forged"})
        forged = forged.model_copy(update={"hash": record_hash(forged.body())})
        await producer.publish_many(AUDIT, [to_event(forged, trail.instance)])
        # ... and records that are not one: bytes that are no event, an event missing a record's fields,
        # a record whose hash is not its own, one of another trail.
        unsigned = forged.model_copy(update={"seq": 5, "member": "unhashed"})
        broken = Event(id=f"audit/{trail.instance}/6", type="ApiCall", entity="member:x", source="gateway",
                       data={"instance": trail.instance, "seq": 6})
        await producer.publish_many(AUDIT, [to_event(unsigned, trail.instance), broken,
                                            to_event(forged, "another-instance")])
        raw = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await raw.start()
        try:
            await raw.send_and_wait(AUDIT, b"\xff not an event")
        finally:
            await raw.stop()

        restored = await AuditLog.open(SqliteDatabase(tmp_path / "backup.sqlite"))
        assert restored.instance == trail.instance and await restored.last_seq() == 3
        with caplog.at_level(logging.WARNING, logger="rdx.gateway.audit"):
            assert [r.seq for r in await restore_anchored(restored, client, kafka.bootstrap)] == list(range(4, 13))
        assert "records 4..12 taken back from rdx.audit.v1" in caplog.text
        assert await restored.query(after_seq=0, limit=100) == await trail.query(after_seq=0, limit=100)
        assert await restore_anchored(restored, client, kafka.bootstrap) == []  # whole now: nothing to do
        shipper = AuditShipper(restored, producer, client, gateway, every_s=1.0, max_records=100)
        await _calls(shipper, 2)
        assert await client.query("/audit/last") == 14 and audit.DIVERGED._value.get() == 0
        records = await restored.query(after_seq=0, limit=100)
        assert verify_against_anchors(records, await _anchors(client)) == []


async def test_a_trail_that_cannot_be_made_whole_anchors_nothing_and_says_so(chain, kafka, tmp_path, caplog):
    """Another database (or a backup whose records never reached the topic): nothing on rdx.audit.v1
    completes it. Its calls are still recorded; none is anchored, however far its trail runs."""
    async with _anchoring(chain, kafka) as (client, producer, gateway):
        first = AuditShipper(await AuditLog.open(SqliteDatabase(tmp_path / "first.sqlite")), producer,
                             client, gateway, every_s=1.0, max_records=100)
        await _calls(first, 3 + (await client.query("/audit/last") or 0))  # the chain's trail, anchored
        anchored = await client.query("/audit/last")
        other = await AuditLog.open(SqliteDatabase(tmp_path / "other.sqlite"))
        with caplog.at_level(logging.WARNING, logger="rdx.gateway.audit"):
            assert await restore_anchored(other, client, kafka.bootstrap) == []
            assert f"does not hold anchored record {anchored}" in caplog.text
            shipper = AuditShipper(other, producer, client, gateway, every_s=1.0, max_records=100)
            await _calls(shipper, anchored + 3, request_id="other")  # past the anchored seq: before, anchored
            await shipper._anchor()
        assert await client.query("/audit/last") == anchored
        assert audit.DIVERGED._value.get() == 1
        assert caplog.text.count("does not continue the chain's anchors") == 1  # once a minute at most
        assert f"the chain anchored records up to {anchored}, this trail holds another record" in caplog.text
