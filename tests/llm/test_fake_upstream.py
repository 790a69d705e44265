# mypy: disable-error-code="union-attr,arg-type,index"
# (the SDK types responses as unions of tool-call kinds and messages as TypedDicts; these tests read plain replies)
"""The scripted upstream itself, as other suites use it: through the official SDK, in-process and as a process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
from openai.types.chat import ChatCompletionChunk

from tests.fakes.upstream import FakeUpstream, FakeUpstreamProcess, ToolCallSpec, Turn

HELLO = [{"role": "user", "content": "hi"}]


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0)


def test_non_streaming_reply_and_tool_calls(upstream: FakeUpstream) -> None:
    upstream.push(
        Turn.reply("Hello!", usage={"prompt_tokens": 9, "completion_tokens": 2}),
        Turn.calls(ToolCallSpec("lookup", {"q": "x"}, id="call_9")),
    )
    with client(upstream.base_url) as sdk:
        text = sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
        call = sdk.chat.completions.create(model="gpt-4o", messages=HELLO)

    assert text.choices[0].message.content == "Hello!"
    assert text.usage is not None and (text.usage.prompt_tokens, text.usage.total_tokens) == (9, 11)
    tool_call = call.choices[0].message.tool_calls[0]
    assert (tool_call.id, tool_call.function.name, tool_call.function.arguments) == ("call_9", "lookup", '{"q": "x"}')
    assert call.choices[0].finish_reason == "tool_calls"


def test_rules_then_default_when_the_script_is_exhausted(upstream: FakeUpstream) -> None:
    upstream.add_rule({"last_role": "tool"}, Turn.reply("The weather is nice."))
    upstream.add_rule(lambda body: bool(body.get("tools")), Turn.calls(ToolCallSpec("weather", {})))
    upstream.set_default(Turn.reply("default text"))
    upstream.push(Turn.reply("scripted first"))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    tool_result = [*HELLO, {"role": "tool", "tool_call_id": "c", "content": "sunny"}]

    with client(upstream.base_url) as sdk:
        first = sdk.chat.completions.create(model="m", messages=HELLO, tools=tools)
        by_tools = sdk.chat.completions.create(model="m", messages=HELLO, tools=tools)
        by_role = sdk.chat.completions.create(model="m", messages=tool_result)
        default = sdk.chat.completions.create(model="m", messages=HELLO)
        again = sdk.chat.completions.create(model="m", messages=HELLO)

    assert first.choices[0].message.content == "scripted first"
    assert by_tools.choices[0].message.tool_calls[0].function.name == "weather"
    assert by_role.choices[0].message.content == "The weather is nice."
    assert default.choices[0].message.content == again.choices[0].message.content == "default text"
    assert upstream.pending == 0
    assert len(upstream.chat_requests) == 5


def test_models_endpoint_and_request_log(upstream: FakeUpstream) -> None:
    upstream.set_models(["alpha", "beta"])
    with client(upstream.base_url) as sdk:
        ids = [m.id for m in sdk.models.list()]
    assert ids == ["alpha", "beta"]
    assert upstream.requests[-1].method == "GET" and upstream.requests[-1].path == "/v1/models"


def test_standalone_process_with_a_script_file(tmp_path: Path) -> None:
    script = {
        "turns": [{"text": "one", "chunk_size": 1}, {"error": {"status": 429, "message": "slow down"}}],
        "default": {"text": "forever"},
        "rules": [{"when": {"last_content_contains": "weather"}, "turn": {"text": "sunny"}}],
        "models": ["x-model"],
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))

    with FakeUpstreamProcess(script_file=path) as process, client(process.base_url) as sdk:
        stream = sdk.chat.completions.create(model="m", messages=HELLO, stream=True)
        pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
        try:
            sdk.chat.completions.create(model="m", messages=HELLO)
            raise AssertionError("expected a 429")
        except openai.RateLimitError as error:
            assert "slow down" in str(error)
        weather = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}])
        process.push(Turn.reply("pushed later"))
        pushed = sdk.chat.completions.create(model="m", messages=HELLO)
        fallback = sdk.chat.completions.create(model="m", messages=HELLO)
        models = [m.id for m in sdk.models.list()]
        recorded = process.chat_requests

    assert pieces == ["o", "n", "e"]
    assert weather.choices[0].message.content == "sunny"
    assert pushed.choices[0].message.content == "pushed later"
    assert fallback.choices[0].message.content == "forever"
    assert models == ["x-model"]
    assert len(recorded) == 5
    assert recorded[2].body["messages"] == [{"role": "user", "content": "weather?"}]
    assert recorded[0].headers["authorization"] == "Bearer sk-fake"


def test_a_gated_stream_holds_until_released_at_each_count(upstream: FakeUpstream) -> None:
    upstream.push(Turn.reply("abcdef", chunk_size=1, gate="g", gate_after=(2, 4)))
    with client(upstream.base_url) as sdk:
        chunks: Iterator[ChatCompletionChunk] = iter(
            sdk.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        )
        seen = [next(chunks).choices[0].delta.content for _ in range(2)]  # the role event, then "a"
        upstream.wait_held("g", 1)
        assert seen == ["", "a"] and upstream.script.gate("g").holds == 1
        upstream.release("g")
        seen += [next(chunks).choices[0].delta.content for _ in range(2)]
        upstream.wait_held("g", 2)
        upstream.release("g")
        seen += [c.choices[0].delta.content for c in chunks]
    assert "".join(s or "" for s in seen) == "abcdef" and seen[-1] is None


def test_reset_lets_a_held_stream_finish(upstream: FakeUpstream) -> None:
    upstream.push(Turn.reply("held", gate="h", gate_after=1))
    with client(upstream.base_url) as sdk:
        stream = sdk.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        upstream.wait_held("h", 1)
        upstream.reset()
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == "held"
