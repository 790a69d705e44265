"""Texts too large for the tokenizer in one piece: from the model, from tool calls, from tool outputs.

The tokenizer refuses a single input of 1,000,000 characters or 200,000 tokens; Loom used to fail every
run on a thread holding such a text with `server_error`. Now it is counted (in segments, or bounded) and
truncation drops it like any other message; what the API can refuse is refused with OpenAI's 400.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import wait_status

HUGE = "word " * 220_000  # 1.1M characters, about 220,000 tokens: more than gpt-4o's 128,000-token window


def _sent_chars(request: Any) -> int:
    return sum(len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in request.messages)


@pytest.mark.parametrize("send_usage", [True, False])
def test_a_huge_model_reply_does_not_poison_the_thread(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any, send_usage: bool
) -> None:
    # Without usage from the upstream, Loom counts the reply itself.
    upstream.push(Turn.reply(HUGE, chunk_size=100_000, send_usage=send_usage))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "write a lot"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed", run.last_error
    assert run.usage is not None and run.usage.completion_tokens > 0
    newest = client.beta.threads.messages.list(thread.id).data[0]
    assert newest.content[0].type == "text" and len(newest.content[0].text.value) == len(HUGE)

    # The next run drops the huge message to fit the window, and answers.
    client.beta.threads.messages.create(thread.id, role="user", content="now briefly")
    upstream.push(Turn.reply("brief"))
    before = len(upstream.chat_requests)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed", run.last_error
    sent = upstream.chat_requests[before]
    assert _sent_chars(sent) < 10_000
    assert sent.messages[-1] == {"role": "user", "content": "now briefly"}
    assert client.beta.threads.messages.list(thread.id).data[0].content[0].text.value == "brief"  # type: ignore[union-attr]


def test_huge_tool_call_arguments_reach_the_model_instead_of_failing_the_run(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    """3 MB of streamed arguments: the run's own transcript, never dropped. It is counted and sent; the
    model's answer decides (here: its context is exceeded), not a tokenizer error in Loom."""
    arguments = '{"city": "' + "x" * 3_000_000 + '"}'
    upstream.push(Turn.calls(ToolCallSpec("get_weather", arguments), arguments_chunk_size=200_000))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    run = wait_status(client, thread.id, run.id, {"requires_action", "failed", "completed"})
    assert run.status == "requires_action", run.last_error
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    assert len(call.function.arguments) == len(arguments)
    upstream.push(Turn.context_overflow())
    before = len(upstream.chat_requests)
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}]
    )
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "invalid_prompt", run.last_error
    assert _sent_chars(upstream.chat_requests[before]) > 3_000_000
    # The thread is usable: later runs do not carry an earlier run's tool calls.
    upstream.push(Turn.reply("fine"))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed", run.last_error


def test_tool_output_over_the_limit_is_refused_and_the_run_still_waits(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Paris"})))
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as refused:
        client.beta.threads.runs.submit_tool_outputs(
            run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "y" * 512_001}]
        )
    assert refused.value.status_code == 400
    assert refused.value.body == {
        "message": "Invalid 'tool_outputs[0].output': string too long. Expected a string with maximum length "
        "512000, but got a string with length 512001 instead.",
        "type": "invalid_request_error",
        "param": "tool_outputs[0].output",
        "code": "string_above_max_length",
    }
    assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "requires_action"
    upstream.push(Turn.reply("sunny in Paris"))
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "z" * 512_000}]
    )
    assert run.status == "completed", run.last_error
