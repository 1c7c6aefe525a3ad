"""Where the gateway keeps its keys and audit trail: SQLite files for one gateway (the default), or
one PostgreSQL database shared by every replica (``RDX_GATEWAY_DATABASE_URL``).

The stores write one SQL dialect (``?`` placeholders, standard DDL and ``ON CONFLICT``), which both
engines accept; what differs is how a write is serialised against every other writer:
``locked(name)`` is a transaction that holds a lock named ``name`` — SQLite's write lock
(``BEGIN IMMEDIATE``) for one database file, a PostgreSQL transaction-level advisory lock across
replicas — and ``try_lock(name)`` tells one replica among several that a periodic job is its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

Row = tuple[Any, ...]


class StoreUnavailable(Exception):
    """The shared database did not answer; the request fails, the gateway keeps running."""


class Tx(ABC):
    @abstractmethod
    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    @abstractmethod
    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None: ...


class Database(Tx):
    """Statements outside ``locked`` run each in its own transaction (autocommit)."""

    shared: bool  # True when several gateway replicas may use it at once

    @abstractmethod
    def locked(self, name: str) -> contextlib.AbstractAsyncContextManager[Tx]: ...

    @abstractmethod
    def try_lock(self, name: str) -> contextlib.AbstractAsyncContextManager[bool]: ...

    @abstractmethod
    async def close(self) -> None: ...


class SqliteDatabase(Database):
    shared = False

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash; a power cut may lose the last records, which
        # the audit anchors would then show as missing rather than let pass silently.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._lock = asyncio.Lock()

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, tuple(args)).fetchall()

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        self.conn.execute(sql, tuple(args))

    @contextlib.asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[Tx]:
        async with self._lock:  # one transaction at a time on the one connection
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        yield True  # one gateway per SQLite file

    async def close(self) -> None:
        self.conn.close()


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(f"rdx.gateway.{name}".encode()).digest()[:8], "big", signed=True)


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")  # the stores' SQL has no literal '?'


def _pg_args(args: Sequence[Any]) -> tuple[Any, ...]:
    """PostgreSQL's text holds no NUL (SQLite's does): one in a caller's value becomes U+FFFD, so a
    hostile query parameter is an ordinary value that matches nothing, not an error."""
    return tuple(a.replace("\x00", "\ufffd") if isinstance(a, str) else a for a in args)


class _PgTx(Tx):
    def __init__(self, conn):
        self.conn = conn

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        cur = await self.conn.execute(_pg(sql), _pg_args(args))
        return await cur.fetchall()

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        await self.conn.execute(_pg(sql), _pg_args(args))


class PostgresDatabase(Database):
    """A pool of connections to one PostgreSQL database (psycopg 3)."""

    shared = True

    def __init__(self, url: str, max_connections: int = 10, timeout_s: float = 10.0):
        from psycopg_pool import AsyncConnectionPool

        self.timeout = timeout_s
        self.pool = AsyncConnectionPool(url, min_size=1, max_size=max_connections, open=False, timeout=timeout_s,
                                        kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout_s))})

    async def open(self) -> None:
        try:
            await self.pool.open(wait=True, timeout=self.timeout)
        except Exception as exc:  # noqa: BLE001 - the URL's password must not reach a log
            await self.pool.close()  # no reconnecting in the background of a gateway that will not start
            raise StoreUnavailable(f"PostgreSQL did not answer ({type(exc).__name__})") from None

    @contextlib.asynccontextmanager
    async def _conn(self):
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(f"PostgreSQL did not answer ({type(exc).__name__})") from None

    async def fetch(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        async with self._conn() as conn:
            return await _PgTx(conn).fetch(sql, args)

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        async with self._conn() as conn:
            await _PgTx(conn).execute(sql, args)

    @contextlib.asynccontextmanager
    async def locked(self, name: str) -> AsyncIterator[Tx]:
        async with self._conn() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(name),))
            yield _PgTx(conn)

    @contextlib.asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        key = _lock_key(name)
        async with self._conn() as conn:
            got = (await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))).fetchone())[0]
            try:
                yield bool(got)
            finally:
                if got:
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    async def close(self) -> None:
        await self.pool.close()


async def open_postgres(url: str) -> PostgresDatabase:
    """The database replicated gateways share (``RDX_GATEWAY_DATABASE_URL``)."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("RDX_GATEWAY_DATABASE_URL must be a postgresql:// URL")
    db = PostgresDatabase(url)
    await db.open()
    return db


async def open_redis(url: str, timeout_s: float):
    """The Redis replicated gateways share (``RDX_GATEWAY_REDIS_URL``), checked with a PING."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    if not url.startswith(("redis://", "rediss://")):
        raise ValueError("RDX_GATEWAY_REDIS_URL must be a redis:// or rediss:// URL")
    client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        await client.ping()
    except RedisError as exc:  # the URL's password must not reach a log
        await client.aclose()
        raise StoreUnavailable(f"Redis did not answer ({type(exc).__name__})") from None
    return client
