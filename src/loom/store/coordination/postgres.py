"""Coordination for PostgreSQL replicas: advisory locks and `LISTEN/NOTIFY`.

A named lock is the one-key advisory lock whose key is the name's 64-bit BLAKE2b digest (the
two-key space is the chunk index's: `loom.retrieval.pg_index`). A session lock lives on a pooled
connection of its own for the block, so a killed process's locks go with its connections; a
transaction lock is `pg_advisory_xact_lock` on the caller's connection. Notifications travel
through `pg_notify` in a transaction of their own, and arrive on one asyncpg connection per
process that listens (opened at the first `listen`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom.store.coordination.types import Handler

T = TypeVar("T")
log = logging.getLogger("loom.store")


def advisory_key(name: str) -> int:
    """The advisory lock key of a lock name: a signed 64-bit digest of it."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresCoordinator:
    single_process = False

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._listener: Any = None  # the asyncpg connection that listens, once one `listen` asked

    def choose(self, *, sqlite: Callable[[], T], postgresql: Callable[[], T]) -> T:
        return postgresql()

    @asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        key = advisory_key(name)
        async with self._engine.connect() as conn:
            got = bool((await conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar())
            await conn.commit()
            try:
                yield got
            finally:
                if got:
                    # If this fails the connection is broken, and its session (with the lock) ends with it.
                    with contextlib.suppress(Exception):
                        await conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        await conn.commit()

    async def lock_transaction(self, conn: AsyncConnection, name: str) -> None:
        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key(name)})

    async def notify(self, channel: str, payload: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})

    async def listen(self, channel: str, handler: Handler) -> None:
        if self._listener is None:
            import asyncpg

            url = self._engine.url.set(drivername="postgresql")
            self._listener = await asyncpg.connect(url.render_as_string(hide_password=False))

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                handler(payload)
            except Exception:
                log.exception("a handler of %s notifications failed", channel)

        await self._listener.add_listener(channel, on_notify)

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
