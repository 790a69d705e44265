"""Runs in front of servers that are not OpenAI: honest endings, dialects and `/v1/models`, end to end
through the official SDK (the scripted upstream made to behave like those servers)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, no_traceback
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer
from tests.support.wait import wait_for

# What llama-cpp-python's server answers when a replayed tool call carries `"content": null`.
LLAMACPP_500 = """Traceback (most recent call last):
  File "/root/.venv/lib/python3.11/site-packages/llama_cpp/llama_chat_format.py", line 245, in __call__
    prompt = self._environment.render(
TypeError: can only concatenate str (not "NoneType") to str"""


def _rejects_null_tool_call_content(body: dict[str, Any]) -> bool:
    return any(
        m.get("role") == "assistant" and m.get("tool_calls") and m.get("content") is None
        for m in body.get("messages", [])
    )


@pytest.fixture(scope="module")
def server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    """A server whose `local` backend is found to be llama-cpp-python's (by asking it), plus a rename."""
    config = Path(tempfile.mkdtemp(prefix="loom-dialects-")) / "loom.toml"
    config.write_text(
        f"""
[backends.local]
base_url = "{upstream.base_url}"
max_retries = 1
retry_base_delay = 0.05

[[models]]
name = "smol"
backend = "local"
upstream_model = "smollm2-135m"

# The same server under a prefix whose `/models` fails: what it is cannot be found out.
[backends.unknown]
base_url = "{upstream.url}/unknown/v1"
max_retries = 0

[[models]]
name = "unknown-model"
backend = "unknown"
"""
    )
    env = {"LOOM_CONFIG_FILE": str(config), "LOOM_UPSTREAM_MAX_RETRIES": "1"}
    # The server asks its backends at start (the start-up report): the scripted server already looks like
    # llama-cpp-python then, as a real one would.
    upstream.set_models(["smollm2-135m"], owned_by="me")
    with LoomServer(database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env) as s:
        yield s


@pytest.fixture()
def client(server: LoomServer, upstream: FakeUpstream) -> openai.OpenAI:
    upstream.set_models(["smollm2-135m"], owned_by="me")  # as llama-cpp-python lists its model
    return sdk_client(server)


def _run(client: openai.OpenAI, model: str = "gpt-4o", **kw: Any) -> tuple[Any, Any]:
    assistant = client.beta.assistants.create(model=model, tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50, **kw
    )
    return thread, run


def test_an_answer_cut_off_without_finish_reason_fails_the_run(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Turn.reply("partial answer", chunk_size=2, end_after=4))

    thread, run = _run(client)

    assert run.status == "failed", run
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert run.last_error.message == (
        "The model backend 'default' ended its response in the middle of its answer (no finish reason)"
    )
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_failed"
    assert message.content[0].type == "text" and message.content[0].text.value == "partia"
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "failed" and step.last_error is not None


def test_an_empty_stream_is_retried_then_fails_honestly(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.push(Turn.reply("lost", end_after=0), Turn.reply("second try"))
    thread, run = _run(client)
    assert run.status == "completed"
    assert client.beta.threads.messages.list(thread.id).data[0].status == "completed"

    upstream.push(Turn.reply("lost", end_after=0), Turn.reply("lost", end_after=0))
    thread, run = _run(client)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "without sending an answer" in run.last_error.message
    assert [m.role for m in client.beta.threads.messages.list(thread.id).data] == ["user"]


def test_a_repeatable_500_is_not_retried_and_its_traceback_stays_in_the_log(
    client: openai.OpenAI, upstream: FakeUpstream, server: LoomServer
) -> None:
    upstream.set_default(Turn.error(500, LLAMACPP_500, type="internal_server_error"))
    before = len(upstream.chat_requests)

    _, run = _run(client)

    assert run.status == "failed"
    assert len(upstream.chat_requests) - before == 1
    assert run.last_error is not None and run.last_error.code == "server_error"
    message = run.last_error.message
    assert message == (
        "The model backend 'default' returned HTTP 500: TypeError: can only concatenate str (not \"NoneType\") to str"
    )
    no_traceback(message)
    assert "/root/.venv" in server.log()


def test_llamacpp_tool_round_trip_replays_calls_as_it_accepts_them(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """llama-cpp-python (found by asking `local`): a forced call streams; the replayed call carries
    `content: ""` (null is its 500); `max_tokens` is what it reads."""
    upstream.add_rule(_rejects_null_tool_call_content, Turn.error(500, LLAMACPP_500))
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Paris"}), arguments_chunk_size=3))
    upstream.push(Turn.reply("Sunny."))
    assistant = client.beta.assistants.create(model="smol", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}

    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, tool_choice=forced, max_completion_tokens=300
    ) as stream:
        events = [e.event for e in stream]
    assert events[-1] == "thread.run.requires_action"
    run = client.beta.threads.runs.list(thread_id=thread.id).data[0]
    assert run.status == "requires_action" and run.required_action is not None
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        thread_id=thread.id, run_id=run.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}]
    )

    assert run.status == "completed", run.last_error
    first, second = upstream.chat_requests[-2:]
    assert first.body["model"] == "smollm2-135m" and first.body["stream"] is True
    assert first.body["tool_choice"] == forced and first.body["max_tokens"] == 300
    assert "max_completion_tokens" not in first.body and "stream_options" not in first.body
    replayed = [m for m in second.body["messages"] if m["role"] == "assistant"]
    assert replayed and replayed[0]["content"] == "" and replayed[0]["tool_calls"]
    assert client.beta.threads.messages.list(thread.id).data[0].content[0].text.value == "Sunny."  # type: ignore[union-attr]


def test_auto_tool_choice_on_llamacpp_still_streams_openais_events(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
    assistant = client.beta.assistants.create(model="smol", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])

    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        events = [e.event for e in stream]

    assert upstream.last_request.body["stream"] is False
    assert events == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.step.delta",
        "thread.run.requires_action",
    ]


def test_models_lists_what_the_backends_serve_and_the_renames(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    models = {m.id: m.owned_by for m in client.models.list()}
    assert models["smol"] == "local"  # the configured rename
    # Both backends reach the same scripted server here: its model is listed once, by the default backend.
    assert models["smollm2-135m"] == "default"
    assert client.models.retrieve("smollm2-135m").id == "smollm2-135m"


def test_tool_calls_cut_off_by_the_token_limit_end_the_run_incomplete(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """finish_reason "length" while writing a call: no requires_action with arguments that do not parse;
    the run ends `incomplete` (max_completion_tokens), the step `cancelled` with the call as written."""
    cut = '{"city": "Par'
    upstream.push(Turn.calls(ToolCallSpec("get_weather", cut), arguments_chunk_size=4, finish_reason="length"))
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])

    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        events = [e.event for e in stream]

    assert "thread.run.requires_action" not in events
    assert events[-2:] == ["thread.run.step.cancelled", "thread.run.incomplete"]
    run = client.beta.threads.runs.list(thread_id=thread.id).data[0]
    assert run.status == "incomplete" and run.required_action is None
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert run.usage is not None and run.usage.completion_tokens > 0
    (step,) = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.status == "cancelled" and step.cancelled_at is not None and step.last_error is None
    assert step.step_details.type == "tool_calls"
    (call,) = step.step_details.tool_calls
    assert call.type == "function" and call.function.arguments == cut and call.function.output is None
    # A new run on the thread is allowed at once (the cut-off one is over).
    upstream.push(Turn.reply("Again."))
    assert _run(client)[1].status == "completed"


def test_a_server_tool_cut_off_by_the_token_limit_is_not_run(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    cut = '{"queries": ["capit'
    upstream.push(Turn.calls(ToolCallSpec("file_search", cut), finish_reason="length"))
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "file_search"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "capital?"}])
    before = len(upstream.chat_requests)

    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=256, poll_interval_ms=50
    )

    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert len(upstream.chat_requests) - before == 1  # the search never ran, so no model call with its result
    (step,) = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert step.status == "cancelled" and step.step_details.type == "tool_calls"
    assert step.step_details.tool_calls == []
    assert [m.role for m in client.beta.threads.messages.list(thread.id).data] == ["user"]


def test_a_failed_dialect_detection_is_not_repeated_on_every_call(backend: str, upstream: FakeUpstream) -> None:
    """A server that cannot be asked what it is gets OpenAI's dialect for a while: each call does not
    first spend another probe (for a server that cannot be reached, a connection attempt) on it.

    A server of its own, whose backend fails to say what it is from the start: the start-up report asks
    the backends (one failed round of detection); after that round, calls within the window ask nothing."""
    config = Path(tempfile.mkdtemp(prefix="loom-dialects-")) / "loom.toml"
    config.write_text(
        f"""
[backends.unknown]
base_url = "{upstream.url}/unknown/v1"
max_retries = 0
dialect_retry = 600

[[models]]
name = "unknown-model"
backend = "unknown"
"""
    )
    upstream.set_route("/unknown/v1/models", {"error": {"message": "down"}}, status=503)
    start = len(upstream.requests)
    env = {"LOOM_CONFIG_FILE": str(config)}
    with LoomServer(database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env) as s:
        # The start-up round of detection ends with Ollama's question.
        wait_for(lambda: any(r.path == "/unknown/api/version" for r in upstream.requests[start:]), what="detection")
        before = len(upstream.requests)
        client = sdk_client(s)
        for _ in range(3):
            upstream.push(Turn.reply("hi"))
            assert _run(client, model="unknown-model")[1].status == "completed"

    paths = [r.path for r in upstream.requests[before:]]
    assert paths.count("/unknown/v1/chat/completions") == 3
    assert [p for p in paths if not p.endswith("/chat/completions")] == [], paths
