from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from loom.llm import BackendConfig, OpenAIBackend
from tests.fakes.upstream import FakeUpstream


def config_for(upstream: FakeUpstream, **overrides: Any) -> BackendConfig:
    values: dict[str, Any] = {
        "name": "fake",
        "base_url": upstream.base_url,
        "api_key": "sk-test",
        "max_retries": 2,
        "retry_base_delay_s": 0.01,
        "retry_max_delay_s": 0.05,
        "timeout_s": 30.0,
        "dialect": "openai",
    }
    values.update(overrides)
    return BackendConfig(**values)


@pytest.fixture
async def backend(upstream: FakeUpstream) -> AsyncIterator[OpenAIBackend]:
    backend = OpenAIBackend(config_for(upstream))
    yield backend
    await backend.aclose()
