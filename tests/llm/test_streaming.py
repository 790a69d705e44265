"""The OpenAI-compatible backend against the scripted upstream: what it sends, what it yields."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from loom.llm import ChatAccumulator, ChatChunk, ChatRequest, OpenAIBackend, ToolCallDelta, Usage, collect
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.llm.conftest import config_for

HELLO = ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


async def chunks_of(backend: OpenAIBackend, request: ChatRequest = HELLO) -> list[ChatChunk]:
    return [chunk async for chunk in backend.stream_chat(request)]


async def test_text_streams_in_chunks_with_usage(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn.reply("Hello there!", chunk_size=5, usage={"prompt_tokens": 11, "completion_tokens": 3}))

    chunks = await chunks_of(backend)

    assert [c.content for c in chunks if c.content] == ["Hello", " ther", "e!"]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=11, completion_tokens=3, total_tokens=14)
    sent = upstream.last_request
    assert sent.body["stream"] is True
    assert sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["model"] == "gpt-4o"
    assert sent.body["messages"] == [{"role": "user", "content": "hi"}]
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.path == "/v1/chat/completions"


async def test_server_that_ignores_include_usage_is_fine(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn.reply("ok", send_usage=False))

    result = await collect(backend.stream_chat(HELLO))

    assert (result.content, result.finish_reason, result.usage) == ("ok", "stop", None)


async def test_request_fields_are_sent_as_chat_completions_fields(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}
    request = ChatRequest(
        model="gpt-4o",
        messages=messages,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "f"}},
        parallel_tool_calls=False,
        response_format=schema,
        temperature=0.2,
        top_p=0.9,
        max_tokens=100,
    )
    upstream.push(Turn.reply("{}"))

    await chunks_of(backend, request)

    body = upstream.last_request.body
    assert body["messages"] == messages
    assert body["tools"] == tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == schema
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.2, 0.9, 100)
    assert "max_tokens" not in body


async def test_unset_fields_are_not_sent_and_max_tokens_param_is_configurable(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, max_tokens_param="max_tokens", include_usage=False))
    upstream.push(Turn.reply("a"))
    try:
        await chunks_of(backend, ChatRequest(model="m", messages=[], tool_choice="none", max_tokens=7))
    finally:
        await backend.aclose()

    body = upstream.last_request.body
    assert body["max_tokens"] == 7
    for absent in ("tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "stream_options"):
        assert absent not in body


async def test_tool_call_arguments_arrive_in_fragments(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    arguments = {"city": "Paris", "unit": "celsius"}
    upstream.push(Turn.calls(ToolCallSpec("get_weather", arguments, id="call_abc"), arguments_chunk_size=4))

    chunks = await chunks_of(backend)

    deltas = [d for c in chunks for d in c.tool_calls]
    assert deltas[0] == ToolCallDelta(index=0, id="call_abc", name="get_weather", arguments="")
    assert len(deltas) > 3
    assert all(d.id is None and d.name is None and d.index == 0 for d in deltas[1:])
    assert json.loads("".join(d.arguments for d in deltas)) == arguments
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]


async def test_parallel_tool_calls_keep_their_indexes(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(
        Turn.calls(
            ToolCallSpec("get_weather", {"city": "Paris"}),
            ToolCallSpec("get_time", {"tz": "Europe/Paris"}),
            arguments_chunk_size=3,
        )
    )

    result = await collect(backend.stream_chat(HELLO))

    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    assert len({c.id for c in result.tool_calls}) == 2
    assert result.finish_reason == "tool_calls"


async def test_refusal_deltas(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn.refuse("I can't help with that.", chunk_size=6))

    chunks = await chunks_of(backend)

    assert [c.refusal for c in chunks if c.refusal] == ["I can'", "t help", " with ", "that."]
    assert not any(c.content for c in chunks)


def _chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def test_quirky_tool_call_streams_are_normalized(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    # Seen from real servers: id and name repeated on every delta, no id at all, and several parallel
    # calls all sent with index 0.
    fn = "function"
    upstream.push(
        Turn(
            raw_chunks=(
                _chunk({"role": "assistant"}),
                _chunk({"tool_calls": [{"index": 0, "id": "call_1", fn: {"name": "a", "arguments": '{"x"'}}]}),
                _chunk({"tool_calls": [{"index": 0, "id": "call_1", fn: {"name": "a", "arguments": ": 1}"}}]}),
                _chunk({"tool_calls": [{"index": 0, "id": "call_2", fn: {"name": "b", "arguments": "{}"}}]}),
                _chunk({"tool_calls": [{"index": 5, fn: {"name": "c", "arguments": "{}"}}]}),
                _chunk({}, "tool_calls"),
            )
        )
    )

    chunks = await chunks_of(backend)

    deltas = [d for c in chunks for d in c.tool_calls]
    assert [(d.index, d.id, d.name) for d in deltas] == [
        (0, "call_1", "a"),
        (0, None, None),
        (1, "call_2", "b"),
        (2, deltas[3].id, "c"),
    ]
    assert deltas[3].id is not None and deltas[3].id.startswith("call_")
    acc = ChatAccumulator()
    for chunk in chunks:
        acc.add(chunk)
    assert [(c.name, c.arguments) for c in acc.result().tool_calls] == [("a", '{"x": 1}'), ("b", "{}"), ("c", "{}")]


async def test_closing_the_stream_early_releases_a_hanging_upstream(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, timeout_s=60.0))
    upstream.push(Turn.hang(after=3))
    try:
        async with contextlib.aclosing(backend.stream_chat(HELLO)) as stream:  # type: ignore[type-var]  # an async generator
            first = await anext(stream)
        assert first.content == "p"
        # The upstream stays usable for the next call on the same client.
        upstream.push(Turn.reply("next"))
        result = await asyncio.wait_for(collect(backend.stream_chat(HELLO)), 20)
        assert result.content == "next"
    finally:
        await backend.aclose()


async def test_concurrent_streams_share_one_backend(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.set_default(Turn.reply("same answer", chunk_size=2, chunk_delay_s=0.001))
    requests = [ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(20)]

    results = await asyncio.gather(*(collect(backend.stream_chat(r)) for r in requests))

    assert {r.content for r in results} == {"same answer"}
    asked = sorted(r.messages[0]["content"] for r in upstream.wait_for_requests(20))
    assert asked == sorted(f"q{i}" for i in range(20))
