"""Every run knob of CONFORMANCE §4.3: echoed on the run, and honoured in what the model upstream received."""

from __future__ import annotations

from typing import Any

import openai

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, TINY_WINDOW

SCHEMA = {
    "name": "answer",
    "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
    "strict": True,
}


def _thread(client: openai.OpenAI, *texts: str) -> Any:
    return client.beta.threads.create(messages=[{"role": "user", "content": t} for t in texts or ("hi",)])


def test_defaults_are_echoed(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = _thread(client)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.model == "gpt-4o" and run.instructions == "You are terse."
    assert run.tool_choice == "auto" and run.parallel_tool_calls is True
    assert run.response_format == "auto"
    assert run.truncation_strategy is not None
    assert (run.truncation_strategy.type, run.truncation_strategy.last_messages) == ("auto", None)
    assert run.temperature == 1.0 and run.top_p == 1.0
    assert run.max_prompt_tokens is None and run.max_completion_tokens is None and run.metadata == {}
    assert [t.type for t in run.tools] == ["function"]
    body = upstream.last_request.body
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is True
    assert "response_format" not in body


def test_instructions_replace_and_additional_instructions_append(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = _thread(client)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, instructions="Speak French."
    )
    assert run.instructions == "Speak French."
    assert upstream.last_request.body["messages"][0] == {"role": "system", "content": "Speak French."}
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, additional_instructions="Use one word."
    )
    assert run.instructions == "You are terse.\n\nUse one word."
    assert upstream.last_request.body["messages"][0]["content"] == "You are terse.\n\nUse one word."


def test_model_tools_temperature_top_p_metadata_overrides(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = _thread(client)
    other_tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        model="gpt-4o-mini",
        tools=[other_tool],  # type: ignore[list-item]
        temperature=0.25,
        top_p=0.5,
        metadata={"purpose": "knobs"},
    )
    assert run.status == "completed"
    assert run.model == "gpt-4o-mini" and run.temperature == 0.25 and run.top_p == 0.5
    assert run.metadata == {"purpose": "knobs"}
    assert [t.function.name for t in run.tools if t.type == "function"] == ["lookup"]
    body = upstream.last_request.body
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.25 and body["top_p"] == 0.5
    assert [t["function"]["name"] for t in body["tools"]] == ["lookup"]


def test_response_formats(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = _thread(client, "Answer in JSON")
    cases: list[tuple[Any, Any]] = [
        ({"type": "text"}, {"type": "text"}),
        ({"type": "json_object"}, {"type": "json_object"}),
        ({"type": "json_schema", "json_schema": SCHEMA}, {"type": "json_schema", "json_schema": SCHEMA}),
    ]
    for given, sent in cases:
        upstream.push(Turn.reply('{"a": "b"}'))
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, response_format=given
        )
        assert run.status == "completed"
        assert run.response_format is not None and run.response_format.type == given["type"]  # type: ignore[union-attr]
        assert upstream.last_request.body["response_format"] == sent
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, response_format="auto"
    )
    assert run.response_format == "auto" and "response_format" not in upstream.last_request.body


def test_tool_choice_and_parallel_tool_calls(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = _thread(client)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, tool_choice="none")
    assert run.tool_choice == "none" and run.status == "completed"
    body = upstream.last_request.body
    assert "tools" not in body or body.get("tool_choice") == "none"
    for choice in ("auto", "required"):
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, tool_choice=choice, parallel_tool_calls=False
        )
        assert run.tool_choice == choice and run.parallel_tool_calls is False
        body = upstream.last_request.body
        assert body["tool_choice"] == choice and body["parallel_tool_calls"] is False
    named = {"type": "function", "function": {"name": "get_weather"}}
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Bern"})))
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        tool_choice=named,  # type: ignore[arg-type]
    )
    assert run.status == "requires_action"
    assert run.tool_choice is not None and run.tool_choice.type == "function"  # type: ignore[union-attr]
    assert run.tool_choice.function is not None and run.tool_choice.function.name == "get_weather"  # type: ignore[union-attr]
    assert upstream.last_request.body["tool_choice"] == named
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_max_completion_tokens_makes_run_incomplete(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = _thread(client)
    upstream.push(Turn.reply("A long answer cut", finish_reason="length"))
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=256
    )
    assert run.max_completion_tokens == 256
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_completion_tokens"
    assert run.usage is not None
    body = upstream.last_request.body
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 256
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"


def test_max_prompt_tokens_truncates_then_gives_up(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    old = "old " * 200  # about 200 tokens each
    thread = _thread(client, "first " + old, "second " + old, "newest question")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_prompt_tokens=300
    )
    assert run.status == "completed" and run.max_prompt_tokens == 300
    sent = upstream.last_request.body["messages"]
    assert sent[-1] == {"role": "user", "content": "newest question"}
    assert not any(m["content"].startswith("first") for m in sent if isinstance(m.get("content"), str))
    # The newest message alone is over the cap: nothing fits, the run ends incomplete without a model call.
    thread = _thread(client, "huge " * 400)
    before = len(upstream.chat_requests)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, max_prompt_tokens=256
    )
    assert run.status == "incomplete"
    assert run.incomplete_details is not None and run.incomplete_details.reason == "max_prompt_tokens"
    assert len(upstream.chat_requests) == before


def test_truncation_auto_fits_context_window(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    """`tiny-ctx` has a TINY_WINDOW-token window (TOML config): the oldest messages are dropped."""
    texts = [f"message {i} " + "word " * 120 for i in range(6)]
    thread = _thread(client, *texts)
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, model="tiny-ctx")
    assert run.status == "completed" and run.model == "tiny-ctx"
    sent = upstream.last_request.body["messages"]
    kept = [m["content"] for m in sent if m["role"] == "user"]
    assert 1 <= len(kept) < 6
    assert kept == texts[-len(kept) :]
    assert sum(len(k) for k in kept) // 4 < TINY_WINDOW
    # Without the tiny window everything is sent.
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert len([m for m in upstream.last_request.body["messages"] if m["role"] == "user"]) == 6


def test_truncation_last_messages(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = _thread(client, "a", "b", "c", "d")
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        truncation_strategy={"type": "last_messages", "last_messages": 2},
    )
    assert run.truncation_strategy is not None
    assert (run.truncation_strategy.type, run.truncation_strategy.last_messages) == ("last_messages", 2)
    sent = upstream.last_request.body["messages"]
    assert sent == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "c"},
        {"role": "user", "content": "d"},
    ]


def test_thread_and_run_knobs(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "x"}]},
        instructions="Only this.",
        model="gpt-4o-mini",
        temperature=0.5,
        tool_choice="none",
        metadata={"via": "create_and_run"},
        tools=[FUNCTION_TOOL],
    )
    assert run.status == "completed"
    assert (run.instructions, run.model, run.temperature, run.tool_choice) == (
        "Only this.",
        "gpt-4o-mini",
        0.5,
        "none",
    )
    assert run.metadata == {"via": "create_and_run"}
    body = upstream.last_request.body
    assert body["model"] == "gpt-4o-mini" and body["messages"][0] == {"role": "system", "content": "Only this."}
    assert body["temperature"] == 0.5


def test_reasoning_effort_is_passed_and_echoed(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = _thread(client)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, model="o3-mini", reasoning_effort="low"
    )
    assert run.status == "completed" and run.to_dict()["reasoning_effort"] == "low"
    assert upstream.last_request.body["reasoning_effort"] == "low"
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.to_dict().get("reasoning_effort") is None
    assert "reasoning_effort" not in upstream.last_request.body
