"""Apply Alembic migrations to the configured database (automatically at start, or `loom migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from loom.store.coordination import coordinator_for

_MIGRATIONS = Path(__file__).parent / "migrations"
# Any name works; it only has to be the same for every replica starting at once.
_LOCK = "loom-migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


async def migrate(engine: AsyncEngine) -> None:
    coordination = coordinator_for(engine)
    try:
        async with engine.begin() as conn:
            # Replicas starting together must not migrate concurrently.
            await coordination.lock_transaction(conn, _LOCK)
            await conn.run_sync(_upgrade)
    finally:
        await coordination.close()
