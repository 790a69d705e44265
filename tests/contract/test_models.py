"""`/v1/models`: the exactly named model routes of the configuration, through the SDK in strict mode."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.contract.conftest import checked_client
from tests.support.server import LoomServer

CONFIG = """
[[models]]
name = "gpt-4o"

[[models]]
name = "local/qwen2.5:7b"

[[models]]
name = "llama*"
"""


@pytest.fixture(scope="module")
def configured_server() -> Iterator[LoomServer]:
    config = Path(tempfile.mkdtemp(prefix="loom-models-")) / "loom.toml"
    config.write_text(CONFIG)
    with LoomServer(extra_env={"LOOM_CONFIG_FILE": str(config)}) as server:
        yield server


def test_list_and_retrieve(configured_server: LoomServer) -> None:
    client = checked_client(configured_server)
    assert [m.id for m in client.models.list()] == ["gpt-4o", "local/qwen2.5:7b"]
    model = client.models.retrieve("local/qwen2.5:7b")
    assert model.id == "local/qwen2.5:7b" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("llama-3")
    assert err.value.body["message"] == "No model found with id 'llama-3'."  # type: ignore[index]


def test_models_need_a_key_but_no_beta_header(loom_server: LoomServer) -> None:
    import httpx

    assert httpx.get(f"{loom_server.base_url}/models").status_code == 401
    ok = httpx.get(f"{loom_server.base_url}/models", headers={"Authorization": "Bearer sk-test-default"})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
