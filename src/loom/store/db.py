"""The database: one async engine, SQLite or PostgreSQL, and the two ways to use it (read, write)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pydantic_core
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def _dumps(value: Any) -> str:
    return pydantic_core.to_json(value).decode()


# Objects are stored as JSON documents: pydantic-core reads and writes them about 3x faster than json.
_JSON = {"json_serializer": _dumps, "json_deserializer": pydantic_core.from_json}


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Enough pooled connections for a busy server: overflow connections are closed when returned,
        # and with aiosqlite each one is a thread to start and stop.
        # No reset on return: every use ends its own transaction (`connect()` rolls back, `begin()` commits),
        # and the extra ROLLBACK after each commit is one more trip to aiosqlite's thread.
        engine = create_async_engine(url, pool_size=24, max_overflow=16, pool_reset_on_return=None, **_JSON)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True, **_JSON)


class Database:
    """Reads run concurrently; on SQLite, writes of this process go one at a time.

    SQLite allows one writer. A deferred transaction that read and then writes fails with SQLITE_BUSY
    (no waiting) when another connection wrote meanwhile, so this process's writers queue on a lock
    instead of racing. PostgreSQL needs no such lock: its row locks do the work.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self.is_sqlite:
            async with self._write_lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
