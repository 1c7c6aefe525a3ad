"""Consuming a topic in a test, through the chassis' idempotent consumer, until enough is applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.common.kafka import IdempotentConsumer


async def consume_until(consumer: IdempotentConsumer, count_sql: str, want: int, timeout: float = 30.0,
                        settle: float = 0.5) -> int:
    """Run ``consumer`` until ``count_sql`` counts ``want`` (or ``timeout``), then ``settle`` seconds
    more so that any duplicate that would follow arrives too; returns the final count."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if consumer.conn.execute(count_sql).fetchone()[0] >= want:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)
        return consumer.conn.execute(count_sql).fetchone()[0]
    finally:
        stop.set()
        await task


async def applied_counts(bootstrap: str, topics: list[str], group: str, db: Path, want: int,
                         timeout: float = 30.0) -> dict[str, int]:
    """How many times each event id was applied by a fresh idempotent consumer (1 each, if all is well)."""

    def handler(event, conn):
        conn.execute("INSERT INTO applied VALUES (?)", (event.id,))

    consumer = IdempotentConsumer(bootstrap, "test", topics, group, db, handler)
    consumer.conn.execute("CREATE TABLE IF NOT EXISTS applied (id TEXT)")
    await consumer.start()
    try:
        await consume_until(consumer, "SELECT count(*) FROM applied", want, timeout, settle=1.0)
        return dict(consumer.conn.execute("SELECT id, count(*) FROM applied GROUP BY id").fetchall())
    finally:
        await consumer.stop()
