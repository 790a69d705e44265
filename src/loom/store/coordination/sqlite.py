"""Coordination for SQLite: one process owns the database, so locks and notifications stay in it.

Locks are asyncio locks by name; a notification is handed to this process's listeners on the
event loop's next turn (as PostgreSQL delivers one after the notifying transaction, never inside it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection

from loom.store.coordination.types import Handler

T = TypeVar("T")
log = logging.getLogger("loom.store")


class SQLiteCoordinator:
    single_process = True

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._transaction_locks: dict[str, asyncio.Lock] = {}
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._closed = False

    def choose(self, *, sqlite: Callable[[], T], postgresql: Callable[[], T]) -> T:
        return sqlite()

    @asynccontextmanager
    async def try_lock(self, name: str) -> AsyncIterator[bool]:
        if name in self._held:
            yield False
            return
        self._held.add(name)
        try:
            yield True
        finally:
            self._held.discard(name)

    async def lock_transaction(self, conn: AsyncConnection, name: str) -> None:
        lock = self._transaction_locks.setdefault(name, asyncio.Lock())
        await lock.acquire()
        sync_conn = conn.sync_connection
        assert sync_conn is not None, "lock_transaction needs an open connection"

        released = False

        def release(*_args: Any) -> None:
            # Left attached (no listener may be removed while SQLAlchemy runs them): the flag makes a
            # later transaction of the same connection release nothing.
            nonlocal released
            if not released:
                released = True
                lock.release()

        event.listen(sync_conn, "commit", release)
        event.listen(sync_conn, "rollback", release)

    async def notify(self, channel: str, payload: str) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        for handler in list(self._handlers.get(channel, ())):
            loop.call_soon(_deliver, channel, handler, payload)

    async def listen(self, channel: str, handler: Handler) -> None:
        self._handlers[channel].append(handler)

    async def close(self) -> None:
        self._closed = True
        self._handlers.clear()


def _deliver(channel: str, handler: Handler, payload: str) -> None:
    try:
        handler(payload)
    except Exception:
        log.exception("a handler of %s notifications failed", channel)
