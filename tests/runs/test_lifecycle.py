"""Runs through the official SDK: create, poll, list, retrieve, modify, steps, usage, thread rules, cancel,
function calling and tool-output validation (CONFORMANCE §3.4, §3.5, §4)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, wait_status
from tests.support.server import LoomServer
from tests.support.wait import wait_for


def test_create_and_poll_completes_with_message_steps_and_usage(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hello"}])
    upstream.push(Turn.reply("Hi there!", chunk_size=2, usage={"prompt_tokens": 11, "completion_tokens": 3}))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    assert run.completed_at is not None and run.started_at is not None and run.expires_at is None
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (11, 3, 14)
    messages = client.beta.threads.messages.list(thread.id, order="asc").data
    assert [m.role for m in messages] == ["user", "assistant"]
    reply = messages[1]
    assert reply.content[0].type == "text" and reply.content[0].text.value == "Hi there!"
    assert reply.run_id == run.id and reply.assistant_id == assistant.id and reply.status == "completed"
    assert messages[0].run_id is None
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
    assert len(steps) == 1
    step = steps[0]
    assert step.type == "message_creation" and step.status == "completed"
    assert step.step_details.type == "message_creation"
    assert step.step_details.message_creation.message_id == reply.id
    assert step.usage is not None and step.usage.total_tokens == 14
    same = client.beta.threads.runs.steps.retrieve(
        step.id,
        thread_id=thread.id,
        run_id=run.id,
        include=["step_details.tool_calls[*].file_search.results[*].content"],
    )
    assert same.id == step.id and same.run_id == run.id
    # The request the model saw: instructions first, then the thread.
    sent = upstream.last_request.body
    assert sent["model"] == "gpt-4o" and sent["stream"] is True
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
    ]


def test_retrieve_sends_poll_after_header_and_list_and_modify(
    run_server: LoomServer, client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
    first = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    second = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, metadata={"k": "v"}
    )
    raw = client.beta.threads.runs.with_raw_response.retrieve(second.id, thread_id=thread.id)
    assert raw.headers["openai-poll-after-ms"] == "20"
    assert raw.parse().metadata == {"k": "v"}
    listed = client.beta.threads.runs.list(thread.id).data
    assert [r.id for r in listed] == [second.id, first.id]
    asc = client.beta.threads.runs.list(thread.id, order="asc", limit=1)
    assert [r.id for r in asc.data] == [first.id] and asc.has_more
    modified = client.beta.threads.runs.update(second.id, thread_id=thread.id, metadata={"k": "w", "x": "1"})
    assert modified.metadata == {"k": "w", "x": "1"} and modified.status == "completed"
    assert client.beta.threads.runs.retrieve(second.id, thread_id=thread.id).metadata == {"k": "w", "x": "1"}
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)
    other = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.retrieve(second.id, thread_id=other.id)


def test_create_thread_and_run_poll(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.push(Turn.reply("Done."))
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "Go"}]}
    )
    assert run.status == "completed" and run.thread_id.startswith("thread_")
    messages = client.beta.threads.messages.list(run.thread_id, order="asc").data
    assert [m.content[0].text.value for m in messages if m.content[0].type == "text"] == ["Go", "Done."]
    assert upstream.last_request.body["messages"][-1] == {"role": "user", "content": "Go"}


def test_usage_is_summed_over_model_calls(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
    upstream.push(
        Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"}), usage={"prompt_tokens": 50, "completion_tokens": 7})
    )
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action" and run.required_action is not None
    upstream.push(Turn.reply("Cold.", usage={"prompt_tokens": 70, "completion_tokens": 2}))
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "-5C"}]
    )
    assert run.status == "completed"
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (120, 9, 129)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].usage is not None and steps[0].usage.total_tokens == 57
    assert steps[1].usage is not None and steps[1].usage.total_tokens == 72


def test_function_calling_round_trip(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather in Paris and Rome?"}])
    upstream.push(
        Turn.calls(
            ToolCallSpec("get_weather", {"city": "Paris"}),
            ToolCallSpec("get_weather", {"city": "Rome"}),
            arguments_chunk_size=3,
        )
    )
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    assert run.required_action is not None and run.required_action.type == "submit_tool_outputs"
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_weather"]
    assert [c.function.arguments for c in calls] == ['{"city": "Paris"}', '{"city": "Rome"}']
    assert all(c.id.startswith("call_") for c in calls) and calls[0].id != calls[1].id
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.type == "tool_calls" and step.status == "in_progress"
    assert step.step_details.type == "tool_calls"
    assert [c.function.output for c in step.step_details.tool_calls] == [None, None]  # type: ignore[union-attr]

    # Validation: every pending call must be answered, with known ids.
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id,
            thread_id=thread.id,
            tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}, {"tool_call_id": "call_bogus", "output": "y"}],
        )
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"

    upstream.push(Turn.reply("Paris sunny, Rome hot."))
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": calls[1].id, "output": "hot"}, {"tool_call_id": calls[0].id, "output": "sunny"}],
    )
    assert done.status == "completed" and done.required_action is None
    sent = upstream.last_request.body["messages"]
    assert sent[-3]["role"] == "assistant"
    assert [c["id"] for c in sent[-3]["tool_calls"]] == [calls[0].id, calls[1].id]
    assert sent[-2] == {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}
    assert sent[-1] == {"role": "tool", "tool_call_id": calls[1].id, "content": "hot"}
    step = client.beta.threads.runs.steps.retrieve(step.id, thread_id=thread.id, run_id=run.id)
    assert step.status == "completed"
    assert [c.function.output for c in step.step_details.tool_calls] == ["sunny", "hot"]  # type: ignore[union-attr]

    # A finished run accepts no outputs.
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": calls[0].id, "output": "x"}]
        )
    assert info.value.message.endswith('Runs in status "completed" do not accept tool outputs.')


def test_one_active_run_per_thread_and_no_messages_while_active(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Lima"})))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert info.value.status_code == 400
    assert info.value.message.endswith(f"Thread {thread.id} already has an active run {run.id}.")
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.messages.create(thread.id, role="user", content="more")
    assert info.value.status_code == 400 and run.id in info.value.message
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = wait_status(client, thread.id, run.id, {"cancelled"})
    assert final.cancelled_at is not None and final.required_action is None
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "cancelled" and step.cancelled_at is not None
    # The thread is free again.
    client.beta.threads.messages.create(thread.id, role="user", content="never mind")
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_cancel_mid_stream_leaves_partial_message_incomplete(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Talk"}])
    upstream.push(Turn.hang(after=4))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)

    def partial() -> Any:
        messages = client.beta.threads.messages.list(thread.id).data
        return messages if messages[0].role == "assistant" else None

    wait_for(partial, what="the assistant message to appear")
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelling"
    final = wait_status(client, thread.id, run.id, {"cancelled"})
    assert final.status == "cancelled"
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_cancelled"
    assert message.incomplete_at is not None
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "cancelled"


def test_additional_messages_are_thread_messages(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "one"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_messages=[
            {"role": "assistant", "content": "two"},
            {"role": "user", "content": "three", "metadata": {"m": "1"}},
        ],
    )
    assert run.status == "completed"
    texts = [
        m.content[0].text.value
        for m in client.beta.threads.messages.list(thread.id, order="asc").data
        if m.content[0].type == "text"
    ]
    assert texts[:3] == ["one", "two", "three"]
    assert upstream.last_request.body["messages"][1:] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ]


def test_unknown_ids_and_bad_include(run_server: LoomServer, client: openai.OpenAI, assistant: Any) -> None:
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id="asst_nope")
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id="thread_nope", assistant_id=assistant.id)
    response = httpx.post(
        f"{run_server.base_url}/threads/{thread.id}/runs",
        params={"include[]": "nope"},
        json={"assistant_id": assistant.id},
        headers={"Authorization": "Bearer sk-test-default", "OpenAI-Beta": "assistants=v2"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "include"


def test_function_tool_override_with_no_function(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    """A tools override replaces the assistant's tools (here: none left)."""
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, tools=[])
    assert run.tools == [] and run.status == "completed"
    assert "tools" not in upstream.last_request.body
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, tools=[FUNCTION_TOOL]
    )
    assert upstream.last_request.body["tools"][0]["function"]["name"] == "get_weather"


def test_sdk_poll_helper_gets_a_long_poll(
    run_server: LoomServer, client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    """A GET from an SDK poll helper (`X-Stainless-Poll-Helper: true`) answers when the run settles;
    a plain GET answers at once."""
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "slowly"}])
    upstream.push(Turn.reply("eventually", delay_s=0.6))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    headers = {"Authorization": "Bearer sk-test-default", "OpenAI-Beta": "assistants=v2"}
    url = f"{run_server.base_url}/threads/{thread.id}/runs/{run.id}"
    plain = httpx.get(url, headers=headers)
    assert plain.json()["status"] in ("queued", "in_progress")
    assert 1 <= int(plain.headers["openai-poll-after-ms"]) <= 20
    polled = httpx.get(url, headers={**headers, "X-Stainless-Poll-Helper": "true"}, timeout=30)
    assert polled.json()["status"] == "completed"
