"""Loom in front of llama-cpp-python's server (SmolLM2-135M), through the official SDK.

A 135M model writes nonsense: these tests assert structure (statuses, event order, arguments that
parse, usage, honest endings), never what the text says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.conftest import sdk_client
from tests.llamacpp.conftest import MODEL_ALIAS, LlamaServer
from tests.support.server import LoomServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.llamacpp

# An enum keeps the 135M model's arguments short: the server turns the schema into a grammar, and a free
# string lets it write until the token cap.
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]}},
            "required": ["city"],
        },
    },
}
LONG = "Write a very long story about a lighthouse keeper, with many chapters."
CAP = 256  # OpenAI's smallest accepted max_completion_tokens


def _thread(client: openai.OpenAI, text: str) -> Any:
    return client.beta.threads.create(messages=[{"role": "user", "content": text}])


def _assistant(client: openai.OpenAI, **kw: Any) -> Any:
    return client.beta.assistants.create(model=MODEL_ALIAS, instructions="You are a helpful assistant.", **kw)


def test_models_lists_the_servers_model(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert MODEL_ALIAS in models
    assert models[MODEL_ALIAS].object == "model" and models[MODEL_ALIAS].owned_by == "default"
    assert client.models.retrieve(MODEL_ALIAS).id == MODEL_ALIAS


def test_plain_run_honours_max_completion_tokens(client: openai.OpenAI) -> None:
    thread = _thread(client, LONG)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=_assistant(client).id, max_completion_tokens=CAP, poll_interval_ms=100
    )

    assert run.status in ("completed", "incomplete"), run.last_error
    assert run.usage is not None and 0 < run.usage.completion_tokens <= CAP
    assert run.usage.prompt_tokens > 0
    if run.status == "incomplete":
        assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    (message, _) = client.beta.threads.messages.list(thread.id).data
    assert message.role == "assistant" and message.status in ("completed", "incomplete")
    assert message.content[0].type == "text" and isinstance(message.content[0].text.value, str)


def test_streamed_run_sends_openais_events_in_order(client: openai.OpenAI) -> None:
    thread = _thread(client, "Say hello.")
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=_assistant(client).id, max_completion_tokens=CAP
    ) as stream:
        events = [e.event for e in stream]

    deltas = [e for e in events if e == "thread.message.delta"]
    assert deltas, events
    others = [e for e in events if e != "thread.message.delta"]
    assert others[:7] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
    ]
    assert others[7] in ("thread.message.completed", "thread.message.incomplete")
    assert others[8:] in (
        ["thread.run.step.completed", "thread.run.completed"],
        ["thread.run.step.completed", "thread.run.incomplete"],
    )
    assert events.index("thread.message.delta") > events.index("thread.message.in_progress")


def _submit_until_done(client: openai.OpenAI, thread_id: str, run: Any, rounds: int = 3) -> Any:
    """Answer every required call with an output (the arguments must parse), until the run stops asking."""
    for _ in range(rounds):
        if run.status != "requires_action":
            return run
        outputs: list[Any] = []
        for call in run.required_action.submit_tool_outputs.tool_calls:
            assert call.function.name == "get_weather"
            assert isinstance(json.loads(call.function.arguments), dict)
            outputs.append({"tool_call_id": call.id, "output": "sunny, 21 C"})
        run = client.beta.threads.runs.submit_tool_outputs_and_poll(
            thread_id=thread_id, run_id=run.id, tool_outputs=outputs, poll_interval_ms=100
        )
    return run


def test_forced_tool_choice_then_outputs_submitted(client: openai.OpenAI) -> None:
    thread = _thread(client, "What is the weather in Paris?")
    assistant = _assistant(client, tools=[WEATHER])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_completion_tokens=CAP,
        poll_interval_ms=100,
    )
    assert run.status == "requires_action" and run.required_action is not None, run.last_error
    (call,) = run.required_action.submit_tool_outputs.tool_calls
    assert isinstance(json.loads(call.function.arguments), dict)

    run = _submit_until_done(client, thread.id, run)

    # The replayed tool call is accepted now (it was a 500): the run goes on, never fails.
    assert run.status in ("completed", "incomplete", "requires_action"), run.last_error
    if run.status == "requires_action":
        client.beta.threads.runs.cancel(run_id=run.id, thread_id=thread.id)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert steps[0].step_details.type == "tool_calls"


def test_auto_tool_choice_streams_and_ends_honestly(client: openai.OpenAI) -> None:
    """The server cannot stream `auto` with tools (it fails after the headers): Loom asks for that turn
    whole and still streams OpenAI's events."""
    thread = _thread(client, "What is the weather in Oslo? Use the tool.")
    assistant = _assistant(client, tools=[WEATHER])
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=CAP
    ) as stream:
        events = [e.event for e in stream]
        run = stream.current_run
    assert run is not None
    assert events[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert events[-1] in ("thread.run.requires_action", "thread.run.completed", "thread.run.incomplete"), events
    assert "thread.run.failed" not in events

    run = _submit_until_done(client, thread.id, client.beta.threads.runs.retrieve(run.id, thread_id=thread.id))

    assert run.status in ("completed", "incomplete", "requires_action"), run.last_error
    if run.status == "requires_action":
        client.beta.threads.runs.cancel(run_id=run.id, thread_id=thread.id)
    assert run.usage is None or run.usage.completion_tokens > 0


def test_cancel_mid_stream(client: openai.OpenAI) -> None:
    thread = _thread(client, LONG)
    assistant = _assistant(client)
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
        events: list[str] = []
        for event in stream:
            events.append(event.event)
            if event.event == "thread.message.delta" and events.count("thread.message.delta") == 3:
                assert stream.current_run is not None
                client.beta.threads.runs.cancel(run_id=stream.current_run.id, thread_id=thread.id)
        run = stream.current_run
    assert run is not None
    assert events[-1] == "thread.run.cancelled", events[-5:]
    run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert run.status == "cancelled" and run.cancelled_at is not None
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_cancelled"


def test_model_server_killed_mid_answer_fails_the_run(llama_model: tuple[Path, Path], tmp_path: Path) -> None:
    """A second llama.cpp server, killed (SIGKILL) while it streams: the run fails with `server_error`,
    the partial message is `incomplete`, never `completed`."""
    doomed = LlamaServer(*llama_model, tmp_path).start()
    try:
        env = {"LOOM_UPSTREAM_DIALECT": "auto", "LOOM_UPSTREAM_MAX_RETRIES": "0"}
        with LoomServer(upstream_base_url=doomed.base_url, extra_env=env) as loom:
            client = sdk_client(loom, timeout=120)
            thread = _thread(client, LONG)
            with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=_assistant(client).id) as stream:
                for event in stream:
                    if event.event == "thread.message.delta":
                        doomed.kill()
                        break
            run = wait_for(
                lambda: next(
                    (r for r in client.beta.threads.runs.list(thread_id=thread.id).data if r.status == "failed"),
                    None,
                ),
                30,
                "the run to fail",
            )
            assert run.last_error is not None and run.last_error.code == "server_error"
            assert "model backend 'default'" in run.last_error.message and "\n" not in run.last_error.message
            message = client.beta.threads.messages.list(thread.id).data[0]
            assert message.role == "assistant" and message.status == "incomplete"
            assert message.incomplete_details is not None and message.incomplete_details.reason == "run_failed"
    finally:
        doomed.stop()
