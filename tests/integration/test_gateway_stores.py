"""The gateway's shared stores under contention, on real PostgreSQL and Redis servers: two replicas'
connection pools appending at once make one gap-free hash chain; two Redis clients drawing on one
bucket or racing on one signature get exactly what one gateway would."""

from __future__ import annotations

import asyncio

import pytest

from rdx.stores import PostgresServer, RedisServer
from services.common.audit import GENESIS, verify_chain
from services.gateway.audit import AuditLog
from services.gateway.auth import RedisReplayCache
from services.gateway.db import StoreUnavailable, open_postgres, open_redis
from services.gateway.keys import KeyStore
from services.gateway.limits import RedisRateLimiter

CALL = dict(ts=1.0, request_id="r", member="bank", role="analyst", key_id="k", method="GET", route="/v1/listings",
            decision="allow", reason="ok", status=200, latency_ms=1.0)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    pg, redis = PostgresServer(root), RedisServer(root)
    pg.start()
    redis.start()
    try:
        yield pg, redis
    finally:
        redis.stop()
        pg.stop()


async def test_two_replicas_appending_at_once_make_one_gap_free_chain(servers):
    pg, _ = servers
    dbs = [await open_postgres(pg.url) for _ in range(2)]
    try:
        logs = await asyncio.gather(*(AuditLog.open(db) for db in dbs))  # schema made once, no race
        assert logs[0].instance == logs[1].instance
        records = await asyncio.gather(*(logs[i % 2].append({**CALL, "request_id": f"r{i}"}) for i in range(60)))
        assert sorted(r.seq for r in records) == list(range(1, 61))
        stored = await logs[1].query(limit=1000)
        assert [r.seq for r in stored] == list(range(1, 61))
        assert verify_chain(stored, GENESIS)[0]
        assert await logs[0].last_seq() == 60
    finally:
        for db in dbs:
            await db.close()


async def test_one_replica_at_a_time_holds_the_anchoring_turn(servers):
    pg, _ = servers
    a, b = await open_postgres(pg.url), await open_postgres(pg.url)
    try:
        async with a.try_lock("anchor") as first:
            async with b.try_lock("anchor") as second:
                assert first and not second
        async with b.try_lock("anchor") as again:
            assert again  # released when the holder is done
    finally:
        await a.close()
        await b.close()


async def test_keys_are_shared_and_hostile_tokens_match_nothing(servers):
    pg, _ = servers
    a, b = await open_postgres(pg.url), await open_postgres(pg.url)
    try:
        ka, kb = await KeyStore.open(a), await KeyStore.open(b)
        key, token = await ka.create("bank", "analyst")
        assert (await kb.verify(token)).key_id == key.key_id
        await kb.revoke(key.key_id)
        assert await ka.verify(token) is None
        for hostile in (f"rdx_{key.key_id}\x00.x", "rdx_x' OR '1'='1.y", f"rdx_{key.key_id}.\x00", "rdx_" + "9" * 41 + ".z"):
            assert await ka.verify(hostile) is None
        assert await ka.get("no\x00such") is None  # a NUL is a value that matches nothing, not an error
    finally:
        await a.close()
        await b.close()


async def test_two_clients_draw_on_one_bucket(servers):
    _, redis = servers
    clients = [await open_redis(redis.url, 5) for _ in range(2)]
    try:
        limiters = [RedisRateLimiter(c, rate_per_s=0.001, burst=30, daily_quota=1000, prefix="t1") for c in clients]
        answers = await asyncio.gather(*(limiters[i % 2].take("bank") for i in range(100)))
        assert answers.count(None) == 30 and all(a > 0 for a in answers if a is not None)
        quota = [RedisRateLimiter(c, rate_per_s=1000, burst=1000, daily_quota=7, prefix="t2") for c in clients]
        answers = await asyncio.gather(*(quota[i % 2].take("bank") for i in range(20)))
        assert answers.count(None) == 7 and min(a for a in answers if a is not None) > 0
    finally:
        for c in clients:
            await c.aclose()


async def test_two_clients_racing_on_one_signature_accept_it_once(servers):
    _, redis = servers
    clients = [await open_redis(redis.url, 5) for _ in range(2)]
    try:
        caches = [RedisReplayCache(c, 300, prefix="t3") for c in clients]
        for n in range(10):
            key = n.to_bytes(32, "big")
            firsts = await asyncio.gather(*(caches[i % 2].first_use(key) for i in range(8)))
            assert firsts.count(True) == 1
        ttl = await clients[0].ttl(f"t3:replay:{(0).to_bytes(32, 'big').hex()}")
        assert 590 <= ttl <= 600  # remembered for twice the skew window, then forgotten
    finally:
        for c in clients:
            await c.aclose()


async def test_a_wrong_password_is_store_unavailable_without_the_password(servers):
    pg, redis = servers
    for opener, url in ((lambda u: open_redis(u, 1), redis.url.replace(redis.password, "hunter2")),
                        (open_postgres, pg.url.replace(pg.password, "hunter2"))):
        with pytest.raises(StoreUnavailable) as err:
            await opener(url)
        assert "hunter2" not in str(err.value) and err.value.__cause__ is None
    for url in ("sqlite:///x", "redis://h/0"):
        with pytest.raises(ValueError):
            await open_postgres(url)
