"""The database: one async engine, SQLite or PostgreSQL, and the two ways to use it (read, write)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pydantic_core
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from loom.store.sqlite_inline import inline_creator


def _dumps(value: Any) -> str:
    return pydantic_core.to_json(value).decode()


# Objects are stored as JSON documents: pydantic-core reads and writes them about 3x faster than json.
_JSON = {"json_serializer": _dumps, "json_deserializer": pydantic_core.from_json}
# How long a write waits for SQLite's write lock held by another process or a threaded writer.
_WRITE_LOCK_WAIT_S = 10.0


def make_engine(url: str, *, inline: bool = False) -> AsyncEngine:
    """An engine for `url`. `inline` (SQLite only): statements run on the event loop's thread
    (`loom.store.sqlite_inline`), with no busy timeout: the caller must take the write lock with
    `BEGIN IMMEDIATE` and wait for it without blocking (as `Database.write` does)."""
    if url.startswith("sqlite"):
        extra: dict[str, Any] = {}
        if inline:
            database = make_url(url).database
            if not database or database == ":memory:":
                raise ValueError("the inline SQLite driver needs a database file")
            extra["async_creator"] = inline_creator(database)
        # Enough pooled connections for a busy server: overflow connections are closed when returned
        # (with aiosqlite, each one is a thread to start and stop).
        # No reset on return: every use ends its own transaction (`connect()` rolls back, `begin()` commits),
        # and the extra ROLLBACK after each commit is one more trip to aiosqlite's thread.
        engine = create_async_engine(url, pool_size=24, max_overflow=16, pool_reset_on_return=None, **_JSON, **extra)
        busy_ms = 0 if inline else 10000

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True, **_JSON)


def _locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)


class Database:
    """Reads run concurrently; on SQLite, writes of this process go one at a time.

    SQLite allows one writer: this process's writers queue on an asyncio lock instead of racing, and
    each takes SQLite's write lock when it begins (`BEGIN IMMEDIATE`; a deferred transaction that read
    and then writes would fail with SQLITE_BUSY if another process wrote meanwhile). PostgreSQL needs
    no such lock: its row locks do the work.

    On SQLite, `read()` and `write()` execute on the event loop's thread (their statements are short
    lookups and single-row writes; see `loom.store.sqlite_inline`), and `engine` is a threaded
    aiosqlite engine on the same file for work that scans (the retrieval index) and for migrations.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._api_engine = make_engine(url, inline=True) if self.is_sqlite else self.engine
        self._write_lock = asyncio.Lock()

    @property
    def engines(self) -> tuple[AsyncEngine, ...]:
        """Every engine this database's connections come from (on SQLite, `read`/`write`'s and `engine`)."""
        return (self.engine,) if self._api_engine is self.engine else (self._api_engine, self.engine)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._api_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if not self.is_sqlite:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._api_engine.connect() as conn:
            await self._begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()

    @asynccontextmanager
    async def writer_turn(self) -> AsyncIterator[None]:
        """This process's turn to write, for a writer with an engine of its own (the retrieval index
        on `engine`): no other `write()` runs meanwhile, so neither waits on the other's lock."""
        if not self.is_sqlite:
            yield
            return
        async with self._write_lock:
            yield

    @staticmethod
    async def _begin_immediate(conn: AsyncConnection) -> None:
        """Take SQLite's write lock now (a deferred transaction could fail at its first write), waiting
        on the event loop, not in SQLite's busy handler, while another writer holds it."""
        deadline = time.monotonic() + _WRITE_LOCK_WAIT_S
        pause = 0.0005
        while True:
            try:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                await conn.rollback()
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def dispose(self) -> None:
        if self._api_engine is not self.engine:
            await self._api_engine.dispose()
        await self.engine.dispose()
