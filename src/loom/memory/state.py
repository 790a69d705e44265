"""Where strategies keep their state between runs: the `thread_memory` table, one row per
(thread, strategy, key), deleted with the thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from loom.clock import now
from loom.store.db import Database
from loom.store.tables import Json, Seq, metadata

thread_memory = sa.Table(
    "thread_memory",
    metadata,
    sa.Column("seq", Seq, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("thread_id", sa.String(64), nullable=False),
    sa.Column("strategy", sa.String(128), nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("data", Json, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("thread_id", "strategy", "key", name="uq_thread_memory_key"),
)


class ThreadMemoryState:
    """`loom.memory.protocol.MemoryState` for one thread and strategy."""

    def __init__(self, db: Database, project: str, thread_id: str, strategy: str) -> None:
        self.db = db
        self.project = project
        self.thread_id = thread_id
        self.strategy = strategy

    def _where(self) -> list[sa.ColumnElement[bool]]:
        t = thread_memory
        return [t.c.thread_id == self.thread_id, t.c.strategy == self.strategy, t.c.project == self.project]

    async def get(self, key: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(sa.select(thread_memory.c.data).where(*self._where(), thread_memory.c.key == key))
            ).first()
        return dict(row[0]) if row is not None else None

    async def all(self) -> dict[str, dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (
                await conn.execute(sa.select(thread_memory.c.key, thread_memory.c.data).where(*self._where()))
            ).all()
        return {str(key): dict(data) for key, data in rows}

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self.put_many({key: value})

    async def put_many(self, values: Mapping[str, dict[str, Any]]) -> None:
        """Replace (or add) these keys in one transaction."""
        if not values:
            return
        t = thread_memory
        async with self.db.write() as conn:
            await conn.execute(t.delete().where(*self._where(), t.c.key.in_(list(values))))
            await conn.execute(
                t.insert(),
                [
                    {
                        "project": self.project,
                        "thread_id": self.thread_id,
                        "strategy": self.strategy,
                        "key": key,
                        "data": value,
                        "updated_at": now(),
                    }
                    for key, value in values.items()
                ],
            )


async def forget_thread(db: Database, thread_id: str) -> None:
    """Drop every strategy's state of a deleted thread."""
    async with db.write() as conn:
        await conn.execute(thread_memory.delete().where(thread_memory.c.thread_id == thread_id))
