"""The coordination seam (`loom.store.coordination`) on both databases, real ones: named locks are
exclusive, a transaction lock lasts until its transaction ends, and notifications reach listeners.
On PostgreSQL two coordinators on two engines stand for two replicas."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from tests.support.postgres import new_database
from tests.support.wait import wait_for_async

from loom.store.coordination import Coordinator, coordinator_for


@dataclass
class Replica:
    engine: AsyncEngine
    coordination: Coordinator


@dataclass
class Setup:
    backend: str
    a: Replica
    # Another replica on the same database: on SQLite (one process) the same coordinator.
    b: Replica


@pytest.fixture(params=["sqlite", "postgres"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'coord.db'}")
        a = Replica(engine, coordinator_for(engine))
        replicas = [a]
        b = a
    else:
        url = new_database("coord")
        replicas = [Replica(e, coordinator_for(e)) for e in (create_async_engine(url), create_async_engine(url))]
        a, b = replicas
    try:
        yield Setup(str(request.param), a, b)
    finally:
        for replica in replicas:
            await replica.coordination.close()
            await replica.engine.dispose()


async def test_single_process_mode_and_the_per_database_choice(setup: Setup) -> None:
    sqlite = setup.backend == "sqlite"
    assert setup.a.coordination.single_process is sqlite
    assert setup.a.coordination.choose(sqlite=lambda: "sqlite", postgresql=lambda: "postgres") == setup.backend


async def test_a_held_lock_is_refused_elsewhere_until_released(setup: Setup) -> None:
    async with setup.a.coordination.try_lock("vs_1/file-1") as got:
        assert got
        async with setup.b.coordination.try_lock("vs_1/file-1") as again:
            assert not again
        # A refused attempt released nothing, and another name is free.
        async with setup.b.coordination.try_lock("vs_1/file-1") as again:
            assert not again
        async with setup.b.coordination.try_lock("vs_1/file-2") as other:
            assert other
    async with setup.b.coordination.try_lock("vs_1/file-1") as after:
        assert after


async def test_a_lock_is_released_when_its_block_fails(setup: Setup) -> None:
    with pytest.raises(RuntimeError):
        async with setup.a.coordination.try_lock("job") as got:
            assert got
            raise RuntimeError("the work failed")
    async with setup.b.coordination.try_lock("job") as after:
        assert after


@pytest.mark.parametrize("end", ["commit", "rollback"])
async def test_a_transaction_lock_waits_for_the_holders_transaction_to_end(setup: Setup, end: str) -> None:
    entered = asyncio.Event()

    async def second() -> None:
        async with setup.b.engine.begin() as conn:
            await setup.b.coordination.lock_transaction(conn, "migrations")
            entered.set()

    async with setup.a.engine.connect() as conn:
        await conn.begin()
        await setup.a.coordination.lock_transaction(conn, "migrations")
        waiter = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not entered.is_set(), "the lock was taken while another transaction held it"
        await (conn.commit() if end == "commit" else conn.rollback())
        await asyncio.wait_for(waiter, 10)
    assert entered.is_set()
    # Free again once the second transaction ended too.
    async with setup.a.engine.begin() as conn:
        await asyncio.wait_for(setup.a.coordination.lock_transaction(conn, "migrations"), 10)


async def test_a_notification_reaches_every_listener(setup: Setup) -> None:
    heard_a: list[str] = []
    heard_b: list[str] = []
    await setup.a.coordination.listen("loom_test", heard_a.append)
    await setup.b.coordination.listen("loom_test", heard_b.append)
    await setup.a.coordination.listen("loom_other", lambda p: heard_a.append("other:" + p))
    await setup.a.coordination.notify("loom_test", "run_1")
    await wait_for_async(lambda: "run_1" in heard_a and "run_1" in heard_b, timeout=10, what="both listeners")
    # Replica b's notification reaches a as well; no listener hears another channel's.
    await setup.b.coordination.notify("loom_test", "run_2")
    await wait_for_async(lambda: "run_2" in heard_a, timeout=10, what="a hearing b")
    assert not [p for p in heard_a if p.startswith("other:")]


async def test_a_failing_listener_does_not_stop_the_others(setup: Setup) -> None:
    heard: list[str] = []

    def broken(_payload: str) -> None:
        raise RuntimeError("a broken handler")

    await setup.a.coordination.listen("loom_test", broken)
    await setup.a.coordination.listen("loom_test", heard.append)
    await setup.b.coordination.notify("loom_test", "one")
    await setup.b.coordination.notify("loom_test", "two")
    await wait_for_async(lambda: heard == ["one", "two"], timeout=10, what="both notifications")


async def test_the_ingestion_lock_keeps_the_key_earlier_versions_took() -> None:
    """A replica of an earlier version locked a file with the raw advisory key of "<store>/<file>": during
    a rolling upgrade the new replicas must see that lock as held."""
    url = new_database("coord")
    old, new = create_async_engine(url), create_async_engine(url)
    coordination = coordinator_for(new)
    try:
        digest = hashlib.blake2b(b"vs_abc/file-xyz", digest_size=8).digest()
        key = int.from_bytes(digest, "big", signed=True)
        async with old.connect() as conn:
            assert (await conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
            await conn.commit()
            async with coordination.try_lock("vs_abc/file-xyz") as got:
                assert not got
            await conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            await conn.commit()
        async with coordination.try_lock("vs_abc/file-xyz") as got:
            assert got
    finally:
        await coordination.close()
        await old.dispose()
        await new.dispose()
