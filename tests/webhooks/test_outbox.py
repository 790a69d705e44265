"""The outbox wakes the delivery workers of the database whose transaction recorded events, once it
commits, and not those of another database in the same process."""

from __future__ import annotations

from pathlib import Path

from loom.store.db import Database
from loom.store.migrate import migrate
from loom.webhooks import outbox


async def test_a_commit_wakes_only_its_own_databases_workers(tmp_path: Path) -> None:
    one, two = (Database(f"sqlite+aiosqlite:///{tmp_path / name}.db") for name in ("one", "two"))
    woken: list[str] = []
    wakers = {"one": lambda: woken.append("one"), "two": lambda: woken.append("two")}
    try:
        for name, db in (("one", one), ("two", two)):
            await migrate(db.engine)
            for engine in db.engines:
                outbox.add_waker(engine, wakers[name])
        endpoints = [("we_1", ["thread.run.completed"])]
        async with one.write() as conn:
            assert await outbox.record(conn, "p", "thread.run.completed", {"id": "run_1"}, endpoints) == 1
            assert woken == []  # not before the commit: a worker must find the row
        assert woken == ["one"]
        async with two.write() as conn:
            assert await outbox.record(conn, "p", "thread.run.failed", {"id": "run_2"}, endpoints) == 0
        assert woken == ["one"]  # nothing recorded, nobody woken
    finally:
        for name, db in (("one", one), ("two", two)):
            for engine in db.engines:
                outbox.remove_waker(engine, wakers[name])
            await db.dispose()
