"""A real sandbox (bubblewrap + an IPython kernel) with short limits, shared by the tests of a module.

Needs `bwrap` and the sandbox environment (`python -m loom.sandbox.setup`), which `make test` installs.
Where either is missing the tests fail (a skipped test is not a pass).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from loom.config import Settings
from loom.sandbox import SandboxManager

ENV = Path(os.environ.get("LOOM_SANDBOX_ENV", ".venv-sandbox"))


def _missing() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install -y bubblewrap)"
    if not (ENV / "pyvenv.cfg").exists():
        return f"no sandbox environment at {ENV} (python -m loom.sandbox.setup)"
    return None


def require_sandbox() -> None:
    why = _missing()
    if why is not None:
        pytest.fail(why)


def sandbox_settings(tmp: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp,
        "sandbox_env": ENV,
        "sandbox_timeout_s": 3.0,
        "sandbox_memory_mb": 256,
        "sandbox_max_processes": 64,
        "sandbox_disk_mb": 32,
        "sandbox_tmp_mb": 32,
        "sandbox_max_output_bytes": 8192,
        "sandbox_pool_size": 1,
        "sandbox_max_sessions": 4,
        "sandbox_idle_timeout_s": 600.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def manager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SandboxManager]:
    require_sandbox()
    m = SandboxManager(sandbox_settings(tmp_path_factory.mktemp("sandbox")))
    await m.start()
    try:
        yield m
    finally:
        await m.aclose()
