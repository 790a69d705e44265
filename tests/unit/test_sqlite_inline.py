"""The SQLite path of `Database`: reads and writes on the event loop's thread, never blocking it.

A real SQLite file; the competing writer is a plain `sqlite3` connection in another thread (as the
`loom keys` command in another process, or the retrieval index's threaded engine, would be).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from loom.store import tables
from loom.store.db import Database, make_engine
from loom.store.sqlite_inline import InlineConnection


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'loom.db'}")
    async with database.engine.begin() as conn:
        await conn.run_sync(tables.metadata.create_all)
    yield database
    await database.dispose()


def _insert(n: int) -> sa.Insert:
    return tables.assistants.insert().values(id=f"asst_{n}", project="p", created_at=n, data={"id": f"asst_{n}"})


async def _count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(tables.assistants))).scalar_one())


async def test_reads_and_writes_run_inline(db: Database) -> None:
    async with db.write() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, InlineConnection)
        await conn.execute(_insert(1))
    async with db.read() as conn:
        row = (await conn.execute(sa.select(tables.assistants.c.data))).one()
    assert row[0] == {"id": "asst_1"}


async def test_a_failed_write_leaves_nothing(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.write() as conn:
            await conn.execute(_insert(1))
            raise RuntimeError("half-way")
    assert await _count(db) == 0
    # The connection went back to the pool usable: the next write commits.
    async with db.write() as conn:
        await conn.execute(_insert(2))
    assert await _count(db) == 1


async def test_write_waits_for_another_writer_without_blocking_the_loop(db: Database, tmp_path: Path) -> None:
    holding = threading.Event()
    release = threading.Event()

    def other_writer() -> None:
        conn = sqlite3.connect(tmp_path / "loom.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO assistants (id, project, created_at, data) VALUES ('asst_other', 'p', 0, '{}')")
        holding.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=other_writer)
    thread.start()
    assert await asyncio.to_thread(holding.wait, 10)

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    async def write() -> None:
        async with db.write() as conn:
            await conn.execute(_insert(1))

    tick_task = asyncio.create_task(ticker())
    write_task = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    # The other writer still holds the lock: ours waits, and the loop kept running meanwhile.
    assert not write_task.done()
    assert ticks >= 5
    release.set()
    await asyncio.wait_for(write_task, 10)
    tick_task.cancel()
    await asyncio.to_thread(thread.join, 10)
    assert await _count(db) == 2


async def test_reads_are_not_blocked_by_an_open_write(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(_insert(1))
    async with db.write() as conn:
        await conn.execute(_insert(2))
        # WAL: a reader sees the last commit while this transaction is open.
        assert await _count(db) == 1
    assert await _count(db) == 2


def test_memory_databases_are_refused() -> None:
    # Each inline connection would open a database of its own.
    with pytest.raises(ValueError, match="database file"):
        make_engine("sqlite+aiosqlite:///:memory:", inline=True)
