"""Per-assistant and per-run limits in metadata (`loom_max_run_seconds`, `loom_max_execution_seconds`):
checked against the server's bounds with OpenAI's 400, and a run's `expires_at` follows its limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, wait_status

RUN = "loom_max_run_seconds"
EXECUTION = "loom_max_execution_seconds"


@pytest.mark.parametrize(
    ("key", "value", "ceiling"),
    [
        (RUN, "abc", "86400"),
        (RUN, "0", "86400"),
        (RUN, "86401", "86400"),
        (EXECUTION, "-3", "3600"),
        (EXECUTION, "nan", "3600"),
        (EXECUTION, "7200", "3600"),
    ],
)
def test_limits_out_of_bounds_are_refused_everywhere(
    client: openai.OpenAI, assistant: Any, key: str, value: str, ceiling: str
) -> None:
    message = (
        f"Invalid 'metadata.{key}': expected a number of seconds greater than 0 and at most {ceiling}, "
        f"but got '{value}' instead."
    )
    thread = client.beta.threads.create()
    attempts: list[Callable[[], Any]] = [
        lambda: client.beta.assistants.create(model="gpt-4o", metadata={key: value}),
        lambda: client.beta.assistants.update(assistant.id, metadata={key: value}),
        lambda: client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, metadata={key: value}),
        lambda: client.beta.threads.create_and_run(assistant_id=assistant.id, metadata={key: value}),
    ]
    for attempt in attempts:
        with pytest.raises(openai.BadRequestError) as info:
            attempt()
        assert info.value.status_code == 400
        assert info.value.message.endswith(message)
        body: Any = info.value.body
        assert body["type"] == "invalid_request_error" and body["param"] == f"metadata.{key}"
        assert body["code"] == "invalid_value"
    # Nothing was made or changed.
    assert client.beta.threads.runs.list(thread_id=thread.id).data == []
    assert client.beta.assistants.retrieve(assistant.id).metadata == {}


def test_expires_at_follows_the_assistants_limit_and_the_runs(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL], metadata={RUN: "45"})
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
    upstream.push(Turn.reply("Hello."))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.expires_at == run.created_at + 45
    wait_status(client, thread.id, run.id, {"completed"})

    # The run's own limit wins, and holds again when the run resumes after its tool outputs.
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Lima"})), Turn.reply("Sunny."))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, metadata={RUN: "20.5"})
    assert run.expires_at == run.created_at + 21
    waiting = wait_status(client, thread.id, run.id, {"requires_action"})
    call = waiting.required_action.submit_tool_outputs.tool_calls[0]
    before = int(time.time())
    resumed = client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}]
    )
    assert resumed.expires_at is not None and before + 21 <= resumed.expires_at <= time.time() + 21
    done = wait_status(client, thread.id, run.id, {"completed"})
    assert done.status == "completed"


def test_a_run_past_its_own_limit_expires(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
    upstream.push(Turn.reply("never finished", chunk_size=2, gate="stuck"))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, metadata={RUN: "1"})
    assert run.expires_at == run.created_at + 1
    ended = wait_status(client, thread.id, run.id, {"expired", "completed", "failed"}, timeout=15)
    assert ended.status == "expired"
