"""The database's coordination, behind one protocol: named locks, notify/listen, single-process mode.

Loom's replicas coordinate through their database and nothing else. On PostgreSQL that means
advisory locks and `LISTEN/NOTIFY` (`loom.store.coordination.postgres`); SQLite is one process's
database, so the same calls are in-process there (`loom.store.coordination.sqlite`). Callers hold
a `Coordinator` from the container and never ask which database it is: the implementations (and
`loom.store.db`'s engine setup) are the only code that knows the dialect.

Lock names are global to the database: prefix them by purpose unless they carry object ids that
cannot collide with another use.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom.store.coordination.types import Handler as Handler  # a notification's handler

T = TypeVar("T")


class Coordinator(Protocol):
    @property
    def single_process(self) -> bool:
        """Whether this process is the database's only one (SQLite): whatever another process left
        (a lease, a claim) is then dead, and can be taken over at once."""
        ...

    def choose(self, *, sqlite: Callable[[], T], postgresql: Callable[[], T]) -> T:
        """Build the implementation of a per-database component (the chunk index) for this database."""
        ...

    def try_lock(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Try to take the named lock without waiting; yields whether it was taken. Held until the
        block exits, across transactions, and released if this process dies."""
        ...

    async def lock_transaction(self, conn: AsyncConnection, name: str) -> None:
        """Take the named lock for `conn`'s transaction, waiting for it: released when that
        transaction commits or rolls back. Take it before the transaction writes (on SQLite a
        writer waiting for it would hold the database's write lock meanwhile)."""
        ...

    async def notify(self, channel: str, payload: str) -> None:
        """Deliver `payload` to every listener of `channel`, in every process on this database."""
        ...

    async def listen(self, channel: str, handler: Handler) -> None:
        """Call `handler` with the payload of each later notification on `channel`."""
        ...

    async def close(self) -> None:
        """Stop listening; release what the coordinator holds."""
        ...


def coordinator_for(engine: AsyncEngine) -> Coordinator:
    """The coordinator for the database behind `engine`."""
    if engine.dialect.name == "sqlite":
        from loom.store.coordination.sqlite import SQLiteCoordinator

        return SQLiteCoordinator()
    if engine.dialect.name == "postgresql":
        from loom.store.coordination.postgres import PostgresCoordinator

        return PostgresCoordinator(engine)
    raise ValueError(f"Loom supports SQLite and PostgreSQL, not {engine.dialect.name!r}.")
