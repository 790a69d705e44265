"""Run-engine fixtures: one scripted fake upstream, Loom servers pointed at it (SQLite and PostgreSQL).

The servers get a TOML config with two extra model names:
- `tiny-ctx`: served by the default backend with a context window of TINY_WINDOW tokens (truncation);
- `slow-model`: a backend with a 1 s read timeout and one quick retry (upstream timeouts).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer
from tests.support.wait import wait_for

TINY_WINDOW = 700
FUNCTION_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def write_config(upstream: FakeUpstream) -> Path:
    path = Path(tempfile.mkdtemp(prefix="loom-runs-cfg-")) / "loom.toml"
    path.write_text(
        f"""
[backends.slow]
base_url = "{upstream.base_url}"
api_key = "sk-slow"
timeout = 1
max_retries = 1
retry_base_delay = 0.05

[[models]]
name = "tiny-ctx"
backend = "default"
context_window = {TINY_WINDOW}

[[models]]
name = "slow-model"
backend = "slow"
"""
    )
    return path


def server_env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return {
        "LOOM_CONFIG_FILE": str(write_config(upstream)),
        "LOOM_UPSTREAM_MAX_RETRIES": "1",
        "LOOM_POLL_AFTER_MS": "20",
        **extra,
    }


@pytest.fixture(scope="session")
def run_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    """One server per database backend for the session (tests isolate themselves by their own threads)."""
    env = server_env(upstream, LOOM_LEASE_S="3", LOOM_SSE_KEEPALIVE_S="0.3")
    with LoomServer(
        database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env
    ) as server:
        yield server


@pytest.fixture()
def client(run_server: LoomServer) -> openai.OpenAI:
    return sdk_client(run_server)


@pytest.fixture()
def assistant(client: openai.OpenAI) -> Any:
    return client.beta.assistants.create(model="gpt-4o", instructions="You are terse.", tools=[FUNCTION_TOOL])


def wait_status(client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str], timeout: float = 20.0) -> Any:
    def check() -> Any:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        return run if run.status in statuses else None

    return wait_for(check, timeout, f"run {run_id} to reach {statuses}")


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text, text
