"""The core flow with openai-python 1.65.x (the last with `client.beta.vector_stores`), in its own venv."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.compat.venv import compat_python
from tests.conftest import DEFAULT_KEY
from tests.support.server import LoomServer

SDK_VERSION = "1.65.5"
FLOW = Path(__file__).with_name("flow_v1.py")


def test_core_flow_with_openai_1_65(loom_server: LoomServer) -> None:
    python = compat_python(SDK_VERSION)
    result = subprocess.run(
        [str(python), str(FLOW), loom_server.base_url, DEFAULT_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["ok", SDK_VERSION]
