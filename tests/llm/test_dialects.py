"""Backend dialects: what each kind of server is sent, how the kind is found, the non-streamed fallback."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from loom.llm import ChatChunk, ChatRequest, OpenAIBackend, collect
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.llm.conftest import config_for

TOOL_A: dict[str, Any] = {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}
TOOL_B: dict[str, Any] = {"type": "function", "function": {"name": "b", "parameters": {"type": "object"}}}
REPLAYED_CALL: list[dict[str, Any]] = [
    {"role": "user", "content": "go"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "done"},
]


async def _send(upstream: FakeUpstream, dialect: str, request: ChatRequest, turn: Turn | None = None) -> dict[str, Any]:
    backend = OpenAIBackend(config_for(upstream, dialect=dialect))
    upstream.push(turn or Turn.reply("ok"))
    try:
        await collect(backend.stream_chat(request))
    finally:
        await backend.aclose()
    body: dict[str, Any] = upstream.last_request.body
    return body


async def test_openai_sends_openais_forms(upstream: FakeUpstream) -> None:
    request = ChatRequest(
        model="m", messages=REPLAYED_CALL, tools=[TOOL_A, TOOL_B], tool_choice="required", max_tokens=9
    )
    body = await _send(upstream, "openai", request)
    assert body["messages"][1]["content"] is None
    assert body["tool_choice"] == "required" and len(body["tools"]) == 2
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_llamacpp_replays_tool_calls_with_empty_content_and_reads_max_tokens(upstream: FakeUpstream) -> None:
    request = ChatRequest(model="m", messages=REPLAYED_CALL, max_tokens=9)
    body = await _send(upstream, "llamacpp", request)
    assert body["messages"][1]["content"] == ""
    assert body["messages"][1]["tool_calls"] == REPLAYED_CALL[1]["tool_calls"]
    assert REPLAYED_CALL[1]["content"] is None  # the caller's messages are not changed
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body
    assert "stream_options" not in body and body["stream"] is True


async def test_llamacpp_has_no_required_choice(upstream: FakeUpstream) -> None:
    one = await _send(upstream, "llamacpp", ChatRequest(model="m", messages=[], tools=[TOOL_A], tool_choice="required"))
    assert one["tool_choice"] == {"type": "function", "function": {"name": "a"}}
    assert one["stream"] is True  # a forced function streams
    two = await _send(
        upstream, "llamacpp", ChatRequest(model="m", messages=[], tools=[TOOL_A, TOOL_B], tool_choice="required")
    )
    assert two["tool_choice"] == "auto"


@pytest.mark.parametrize("dialect", ["llama-server", "ollama", "lmstudio"])
async def test_string_only_servers_get_required_with_the_one_tool(upstream: FakeUpstream, dialect: str) -> None:
    forced = {"type": "function", "function": {"name": "b"}}
    body = await _send(
        upstream, dialect, ChatRequest(model="m", messages=[], tools=[TOOL_A, TOOL_B], tool_choice=forced)
    )
    assert body["tool_choice"] == "required"
    assert body["tools"] == [TOOL_B]
    assert body["stream"] is True


async def test_config_overrides_win_over_the_dialect(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(
        config_for(upstream, dialect="llamacpp", max_tokens_param="max_completion_tokens", include_usage=True)
    )
    upstream.push(Turn.reply("ok"))
    try:
        await collect(backend.stream_chat(ChatRequest(model="m", messages=[], max_tokens=3)))
    finally:
        await backend.aclose()
    body = upstream.last_request.body
    assert body["max_completion_tokens"] == 3 and body["stream_options"] == {"include_usage": True}


async def test_auto_tool_choice_on_llamacpp_is_asked_whole_and_replayed_as_chunks(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, dialect="llamacpp"))
    upstream.push(
        Turn.calls(
            ToolCallSpec("a", {"x": 1}, id="call__0_a_cmpl-1"),
            ToolCallSpec("b", {"y": 2}, id="call__1_b_cmpl-1"),
            usage={"prompt_tokens": 20, "completion_tokens": 7},
        )
    )
    try:
        chunks: list[ChatChunk] = [
            c async for c in backend.stream_chat(ChatRequest(model="m", messages=[], tools=[TOOL_A, TOOL_B]))
        ]
    finally:
        await backend.aclose()

    body = upstream.last_request.body
    assert body["stream"] is False and "stream_options" not in body
    deltas = [d for c in chunks for d in c.tool_calls]
    assert [(d.index, d.name, json.loads(d.arguments)) for d in deltas] == [(0, "a", {"x": 1}), (1, "b", {"y": 2})]
    assert all(d.id for d in deltas)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


@pytest.mark.parametrize(
    ("owned_by", "routes", "expected"),
    [
        ("me", {}, "llamacpp"),
        ("llamacpp", {}, "llama-server"),
        ("vllm", {}, "vllm"),
        ("organization_owner", {}, "lmstudio"),
        ("library", {}, "ollama"),
        ("someone", {"/props": {"default_generation_settings": {}, "total_slots": 1}}, "llama-server"),
        ("someone", {"/api/version": {"version": "0.9.0"}}, "ollama"),
        ("someone", {}, "openai"),
    ],
)
async def test_the_dialect_is_found_from_the_servers_answers(
    upstream: FakeUpstream, owned_by: str, routes: dict[str, Any], expected: str
) -> None:
    upstream.set_models(["some-model"], owned_by=owned_by)
    for path, payload in routes.items():
        upstream.set_route(path, payload)
    backend = OpenAIBackend(config_for(upstream, dialect="auto"))
    upstream.set_default(Turn.reply("ok"))
    try:
        assert (await backend.dialect()).name == expected
        await collect(backend.stream_chat(ChatRequest(model="m", messages=REPLAYED_CALL)))
        await collect(backend.stream_chat(ChatRequest(model="m", messages=REPLAYED_CALL)))
    finally:
        await backend.aclose()
    asked = [r.path for r in upstream.requests if r.method == "GET"]
    assert asked and len(asked) <= 3 and asked[0] == "/v1/models"  # asked once, not per request
    content = upstream.last_request.body["messages"][1]["content"]
    assert content == ("" if expected in ("llamacpp", "llama-server", "ollama") else None)


async def test_a_configured_or_azure_dialect_asks_nothing(upstream: FakeUpstream) -> None:
    for config in (
        config_for(upstream, dialect="vllm"),
        config_for(upstream, dialect="auto", api_version="2024-10-21"),
    ):
        backend = OpenAIBackend(config)
        upstream.push(Turn.reply("ok"))
        try:
            await collect(backend.stream_chat(ChatRequest(model="m", messages=[])))
            assert (await backend.dialect()).name in ("vllm", "azure")
        finally:
            await backend.aclose()
    assert [r.method for r in upstream.requests] == ["POST", "POST"]


async def test_an_unreachable_server_is_asked_again_later(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, dialect="auto", base_url="http://127.0.0.1:9/v1", max_retries=0))
    try:
        assert (await backend.dialect()).name == "openai"
        assert backend._dialect is None  # not remembered: the next call asks again
    finally:
        await backend.aclose()


async def test_a_server_failing_while_asked_is_asked_again(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(replace(config_for(upstream, dialect="auto"), dialect_retry_s=0.3))
    upstream.set_models(["m"], owned_by="me")
    upstream.set_route("/v1/models", {"error": {"message": "loading model"}}, status=503)
    try:
        assert (await backend.dialect()).name == "openai"  # for now
        upstream.script.routes.clear()  # the server is up
        assert (await backend.dialect()).name == "openai"  # not asked again at once...
        assert [r.path for r in upstream.requests].count("/v1/models") == 1
        await asyncio.sleep(0.35)
        assert (await backend.dialect()).name == "llamacpp"  # ...but once `dialect_retry_s` has passed
    finally:
        await backend.aclose()
