"""SQLite for SQLAlchemy's asyncio engine, executed on the event loop's own thread.

aiosqlite runs each connection in a thread and hands every call to it through a queue: a statement
costs three or four hand-offs (cursor, execute, fetch, close), each a thread wake-up and a loop
wake-up. For the API's small statements (a row by primary key, one insert) those hand-offs cost more
than SQLite's work, and they are most of the time a run spends before its first token.

This driver keeps aiosqlite's interface, the one SQLAlchemy's `sqlite+aiosqlite` dialect drives,
but runs each call at once, on the caller's thread. It is used only where that is safe:

- statements are short (indexed lookups, single-row writes): the retrieval index, whose queries
  scan, keeps a threaded engine of its own;
- it never waits for a lock while holding the loop: every writer of this process queues on
  `Database`'s asyncio lock, and a write transaction takes SQLite's write lock with
  `BEGIN IMMEDIATE` and a zero busy timeout, retrying after an `await` if another process (the
  `loom keys` command, a threaded writer) holds it (see `Database.write`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any


class InlineCursor:
    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any] | dict[str, Any]]) -> InlineCursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _Immediate:
    """Stands in for aiosqlite's queue to its thread (SQLAlchemy sets isolation levels through it)."""

    __slots__ = ()

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:  # handed to the waiter, as aiosqlite does
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class InlineConnection:
    """The part of `aiosqlite.Connection` that SQLAlchemy uses, executed inline."""

    __slots__ = ("_conn", "_connection", "_tx")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn  # SQLAlchemy checks this is set
        self._tx = _Immediate()

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        return InlineCursor(self._conn.execute(sql, parameters))

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def inline_creator(path: str) -> Callable[[], Any]:
    """`async_creator` for `create_async_engine("sqlite+aiosqlite://…")`."""

    async def connect() -> InlineConnection:
        # Closed by whichever task returns it to the pool last: not necessarily this thread's caller.
        return InlineConnection(sqlite3.connect(path, check_same_thread=False))

    return connect
