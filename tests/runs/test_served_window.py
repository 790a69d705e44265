"""Runs truncate to the window the model server says it serves (not an assumed 32k); configured wins."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer

SERVED = 600  # tokens, as each kind of server says it
MESSAGES = 20  # of about 55 tokens each: far over SERVED, far under 32k


@pytest.fixture(scope="module")
def served() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        _serve(fake)  # before Loom starts: its start-up report asks (and remembers) the windows
        yield fake


def _serve(fake: FakeUpstream) -> None:
    fake.set_route(
        "/v1/models",
        {
            "data": [
                {"id": m, "owned_by": "x", **({"max_model_len": SERVED} if m == "small-vllm" else {})}
                for m in ("small-vllm", "small-lls", "small-lms", "small-oll")
            ]
        },
    )
    fake.set_route("/props", {"default_generation_settings": {"n_ctx": SERVED}})
    fake.set_route("/api/v0/models", {"data": [{"id": "small-lms", "loaded_context_length": SERVED}]})
    fake.set_route("/api/ps", {"models": [{"name": "small-oll:latest", "context_length": SERVED}]})
    fake.set_route("/broken/props", {"error": {"message": "down"}}, status=500)

    def too_long(body: Any) -> bool:  # what a server does with a prompt over its window
        return (
            str(body.get("model")).startswith("small-") and len(json.dumps(body["messages"])) > SERVED * 6
        )  # "word " is a token in 5 characters

    fake.add_rule(too_long, Turn.context_overflow())


@pytest.fixture(scope="module")
def server(backend: str, served: FakeUpstream) -> Iterator[LoomServer]:
    base = served.base_url
    root = base[: -len("/v1")]
    config = Path(tempfile.mkdtemp(prefix="loom-served-")) / "loom.toml"
    config.write_text(
        f"""
[backends.vllm]
base_url = "{base}"
dialect = "vllm"
[backends.lls]
base_url = "{base}"
dialect = "llama-server"
[backends.lms]
base_url = "{base}"
dialect = "lmstudio"
[backends.oll]
base_url = "{base}"
dialect = "ollama"
[backends.broken]
base_url = "{root}/broken/v1"
dialect = "llama-server"

[[models]]
name = "small-vllm"
backend = "vllm"
[[models]]
name = "small-lls"
backend = "lls"
[[models]]
name = "small-lms"
backend = "lms"
[[models]]
name = "small-oll"
backend = "oll"
[[models]]
name = "configured"
backend = "vllm"
upstream_model = "big"
context_window = 20000
[[models]]
name = "unknown-window"
backend = "broken"
"""
    )
    env = {"LOOM_CONFIG_FILE": str(config), "LOOM_POLL_AFTER_MS": "20", "LOOM_UPSTREAM_MAX_RETRIES": "0"}
    with LoomServer(
        database_url=database_url_for(backend),
        upstream_base_url=base,
        extra_env=env,
        serve_args=("--log-level", "info"),
    ) as loom:
        yield loom


def _run(client: openai.OpenAI, fake: FakeUpstream, model: str) -> tuple[Any, list[Any]]:
    fake.reset()  # (the rule counts this test's requests only)
    _serve(fake)
    assistant = client.beta.assistants.create(model=model, instructions="Be brief.")
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": f"m{i} " + "word " * 50} for i in range(MESSAGES)]
    )
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    sent = [m for m in fake.chat_requests[-1].messages if m["role"] == "user"] if fake.chat_requests else []
    return run, sent


@pytest.mark.parametrize("model", ["small-vllm", "small-lls", "small-lms", "small-oll"])
def test_a_thread_longer_than_the_served_window_is_truncated(
    server: LoomServer, served: FakeUpstream, model: str
) -> None:
    run, sent = _run(sdk_client(server), served, model)
    assert run.status == "completed", run.last_error  # not invalid_prompt
    assert 0 < len(sent) < MESSAGES
    assert sent[-1]["content"].startswith(f"m{MESSAGES - 1} ")  # the newest kept


@pytest.mark.parametrize("model", ["configured", "unknown-window"])
def test_a_configured_window_wins_and_a_failing_endpoint_falls_back(
    server: LoomServer, served: FakeUpstream, model: str
) -> None:
    run, sent = _run(sdk_client(server), served, model)
    assert run.status == "completed", run.last_error
    assert len(sent) == MESSAGES  # 20000 configured / 32k default: nothing dropped


def test_the_start_up_report_shows_each_window_and_its_source(server: LoomServer) -> None:
    log = server.log()
    assert "small-vllm -> vllm (context window 600: max_model_len at GET /models)" in log
    assert "small-lls -> lls (context window 600: n_ctx at GET /props)" in log
    assert "small-oll -> oll (context window 600: context_length at GET /api/ps (loaded))" in log
    assert "configured -> vllm (context window 20000: configured)" in log
    assert "unknown-window -> broken (context window 32768: default_context_window)" in log
