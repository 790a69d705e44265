"""The supervisor of background loops, on a real event loop: a loop that dies is logged at ERROR with
its traceback and started again, with a backoff that doubles; stopping ends every loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from loom.supervisor import Supervisor


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5.0):
        while not predicate():  # noqa: ASYNC110 - polls state the loops change, no event to wait on
            await asyncio.sleep(0.01)


async def test_a_loop_that_raises_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="loom.supervisor")
    runs: list[int] = []
    alive = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ValueError(f"pass {len(runs)} broke")
        alive.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(first_backoff_s=0.02, max_backoff_s=1.0)
    task = supervisor.start("flaky", flaky)
    await asyncio.wait_for(alive.wait(), 5.0)
    state = supervisor.loops["flaky"]
    assert state.restarts == 2 and len(runs) == 3
    assert state.last_error == "ValueError: pass 2 broke"
    deaths = [r for r in caplog.records if r.name == "loom.supervisor" and r.levelno == logging.ERROR]
    assert len(deaths) == 2
    for n, record in enumerate(deaths, start=1):
        assert "flaky" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
        assert str(record.exc_info[1]) == f"pass {n} broke"
    # The backoff doubles from one quick death to the next.
    assert [r.args[-1] for r in deaths] == [0.02, 0.04]  # type: ignore[index]
    assert not task.done()
    await supervisor.stop()
    assert task.cancelled()


async def test_a_loop_that_returns_is_restarted_and_the_backoff_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="loom.supervisor")
    calls = 0

    async def returns_at_once() -> None:
        nonlocal calls
        calls += 1

    supervisor = Supervisor(first_backoff_s=0.01, max_backoff_s=0.04)
    supervisor.start("short", returns_at_once)
    await _until(lambda: calls >= 5)
    await supervisor.stop()
    delays = [r.args[-1] for r in caplog.records if r.name == "loom.supervisor"]  # type: ignore[index]
    assert delays[:5] == [0.01, 0.02, 0.04, 0.04, 0.04]
    assert supervisor.loops["short"].last_error == "returned"


async def test_a_healthy_run_resets_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="loom.supervisor")
    calls = 0

    async def slow_then_dies() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            await asyncio.sleep(0.1)  # longer than `healthy_s`: it was running well before dying
        raise RuntimeError("boom")

    supervisor = Supervisor(first_backoff_s=0.01, max_backoff_s=1.0, healthy_s=0.05)
    supervisor.start("resets", slow_then_dies)
    await _until(lambda: calls >= 4)
    await supervisor.stop()
    delays = [r.args[-1] for r in caplog.records if r.name == "loom.supervisor"]  # type: ignore[index]
    assert delays[:3] == [0.01, 0.02, 0.01]


async def test_one_name_is_supervised_once() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor()
    supervisor.start("one", forever)
    with pytest.raises(RuntimeError, match="already supervised"):
        supervisor.start("one", forever)
    await supervisor.stop()
