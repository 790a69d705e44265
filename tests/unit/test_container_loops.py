"""Loom's own background loops run under the container's supervisor, and one of them survives a real
fault: its database table vanishes under it (renamed away), it dies loudly and comes back working."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from loom.config import Settings
from loom.container import Container
from loom.store import tables

# Every forever-loop of a server: files janitor, run sweeper, ingestion queue, vector-store expiry,
# the idle-sandbox reaper (started with the sandbox), and webhook delivery.
LOOPS = {
    "loom-janitor",
    "loom-run-sweeper",
    "loom-ingest",
    "loom-vector-store-janitor",
    "loom-sandbox-reaper",
    "loom-webhooks",
}


@pytest.fixture
async def container(tmp_path: Path) -> AsyncIterator[Container]:
    settings = Settings(
        data_dir=tmp_path,
        database_url="",
        sandbox="unsafe-local",
        sandbox_env=Path(".venv-sandbox").absolute(),
        sandbox_pool_size=0,
        sandbox_prewarm=True,
        vector_store_janitor_s=0.05,
    )
    c = Container(settings)
    c.supervisor.first_backoff_s = 0.1
    await c.start()
    yield c
    await c.stop()


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(20.0):
        while not predicate():  # noqa: ASYNC110 - polls state the loops change, no event to wait on
            await asyncio.sleep(0.02)


async def test_every_background_loop_is_supervised(container: Container) -> None:
    await _until(lambda: container.sandbox.manager is not None or container.sandbox.error is not None)
    assert container.sandbox.error is None
    assert set(container.supervisor.loops) == LOOPS
    for state in container.supervisor.loops.values():
        assert not state.task.done() and state.restarts == 0, state.name


async def test_the_vector_store_janitor_survives_its_table_vanishing(
    container: Container, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="loom.supervisor")
    state = container.supervisor.loops["loom-vector-store-janitor"]
    async with container.db.write() as conn:
        await conn.execute(sa.text("ALTER TABLE vector_stores RENAME TO vector_stores_away"))
    await _until(lambda: state.restarts >= 2)
    deaths = [r for r in caplog.records if "loom-vector-store-janitor" in r.getMessage()]
    assert deaths and all(r.levelno == logging.ERROR for r in deaths)
    assert deaths[0].exc_info is not None and "vector_stores" in str(deaths[0].exc_info[1])

    # The table is back: the restarted loop works again, and expires a store that is past its time.
    async with container.db.write() as conn:
        await conn.execute(sa.text("ALTER TABLE vector_stores_away RENAME TO vector_stores"))
        await conn.execute(
            tables.vector_stores.insert().values(
                id="vs_old", project="p", created_at=1, expires_at=2, data={"id": "vs_old"}
            )
        )
        await conn.execute(
            tables.vector_store_files.insert().values(
                id="file_1",
                project="p",
                created_at=1,
                vector_store_id="vs_old",
                status="completed",
                data={"id": "file_1"},
            )
        )

    async def files_left() -> int:
        async with container.db.read() as conn:
            t = tables.vector_store_files
            query = sa.select(sa.func.count()).select_from(t).where(t.c.vector_store_id == "vs_old")
            return int((await conn.execute(query)).scalar_one())

    async with asyncio.timeout(20.0):
        while await files_left():  # noqa: ASYNC110 - polls the database the janitor changes
            await asyncio.sleep(0.05)
    assert not state.task.done()
    restarts = state.restarts
    await asyncio.sleep(0.3)
    assert state.restarts == restarts  # healthy again: no more deaths
