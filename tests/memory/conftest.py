"""A Loom server per database backend whose Python path holds a test-made distribution with
`loom.memory` entry points (real entry-point discovery, as for a pip-installed plug-in)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import DEFAULT_KEY, sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.runs.conftest import server_env
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer

ENTRY_POINTS = """[loom.memory]
newest_only = loom_test_memory:NewestOnly
exploding = loom_test_memory:Exploding
garbage = loom_test_memory:Garbage
not_a_strategy = loom_test_memory:NotAStrategy
"""


@pytest.fixture(scope="session")
def plugin_path() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="loom-memory-plugin-"))
    shutil.copy(Path(__file__).with_name("plugins.py"), root / "loom_test_memory.py")
    info = root / "loom_test_memory-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: loom-test-memory\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def memory_server(backend: str, upstream: FakeUpstream, plugin_path: Path) -> Iterator[LoomServer]:
    env = server_env(upstream, PYTHONPATH=str(plugin_path))
    with LoomServer(
        database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env
    ) as server:
        yield server


@pytest.fixture()
def client(memory_server: LoomServer) -> openai.OpenAI:
    return sdk_client(memory_server)


@pytest.fixture()
def loose(memory_server: LoomServer) -> Iterator[openai.OpenAI]:
    """The SDK as programs use it (no strict response validation): a run whose `truncation_strategy.type`
    names a strategy is echoed with that name, which the SDK's default passes through (its Literal
    type only rejects it under `_strict_response_validation`)."""
    with openai.OpenAI(base_url=memory_server.base_url, api_key=DEFAULT_KEY, max_retries=0) as made:
        yield made
