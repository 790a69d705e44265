"""The /metrics gauges of the code interpreter read the real manager: its live sessions and the kernels
its pool holds ready (a server with a real sandbox and SQLite, no HTTP needed)."""

from __future__ import annotations

from pathlib import Path

from loom.api.routes.metrics import sandbox_gauges
from loom.container import Container
from tests.sandbox.conftest import require_sandbox, sandbox_settings
from tests.support.wait import wait_for_async


async def test_sandbox_gauges_count_live_sessions_and_pooled_kernels(tmp_path: Path) -> None:
    require_sandbox()
    container = Container(sandbox_settings(tmp_path, database_url="", sandbox_prewarm=False, sandbox_pool_size=1))
    await container.start()
    try:
        assert sandbox_gauges(container) == {}  # not started until first used
        box = await container.sandbox.session("gauged")
        assert (await box.execute("print(1)")).logs == "1\n"
        manager = container.sandbox.manager
        assert manager is not None
        await wait_for_async(lambda: manager.pooled == 1, 20, "the pool to refill", interval=0.05)
        assert sandbox_gauges(container) == {"loom_sandbox_sessions_live": 1.0, "loom_sandbox_sessions_pooled": 1.0}
        await container.sandbox.close_session("gauged")
        assert sandbox_gauges(container) == {"loom_sandbox_sessions_live": 0.0, "loom_sandbox_sessions_pooled": 1.0}
    finally:
        await container.stop()
