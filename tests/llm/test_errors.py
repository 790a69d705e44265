"""Upstream failures become `UpstreamError(code, message)`; transient ones are retried before the first chunk."""

from __future__ import annotations

import socket

import pytest

from loom.llm import BackendConfig, ChatRequest, OpenAIBackend, UpstreamError, collect
from tests.fakes.upstream import FakeUpstream, Turn
from tests.llm.conftest import config_for

HELLO = ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


async def fail(backend: OpenAIBackend) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await collect(backend.stream_chat(HELLO))
    return caught.value


async def test_429_is_rate_limit_exceeded_after_bounded_retries(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.set_default(Turn.error(429, "Rate limit reached for gpt-4o", code="rate_limit_exceeded"))

    error = await fail(backend)

    assert error.code == "rate_limit_exceeded"
    assert error.status == 429
    assert "429" in error.message and "Rate limit reached for gpt-4o" in error.message
    assert error.last_error() == {"code": "rate_limit_exceeded", "message": error.message}
    assert len(upstream.chat_requests) == 3  # 1 + max_retries


async def test_out_of_quota_429_is_not_retried(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn.error(429, "You exceeded your current quota", code="insufficient_quota"))

    error = await fail(backend)

    assert error.code == "rate_limit_exceeded"
    assert len(upstream.chat_requests) == 1


async def test_500_is_retried_then_fails_as_server_error(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.set_default(Turn.error(500, "The server had an error while processing your request."))

    error = await fail(backend)

    assert error.code == "server_error"
    assert "HTTP 500" in error.message and "The server had an error" in error.message
    assert "3 attempts" in error.message
    assert "Traceback" not in error.message
    assert len(upstream.chat_requests) == 3


async def test_one_500_then_success_is_retried_transparently(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn.error(503, "overloaded"), Turn.reply("recovered", chunk_size=3))

    result = await collect(backend.stream_chat(HELLO))

    assert result.content == "recovered"
    assert len(upstream.chat_requests) == 2
    assert upstream.chat_requests[0].body == upstream.chat_requests[1].body


async def test_no_retries_when_configured_off(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, max_retries=0))
    upstream.set_default(Turn.error(502, "bad gateway"))
    try:
        error = await fail(backend)
    finally:
        await backend.aclose()
    assert error.code == "server_error"
    assert error.message == "The model backend 'fake' returned HTTP 502: bad gateway"
    assert len(upstream.chat_requests) == 1


async def test_timeout_before_first_chunk_is_server_error(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, timeout_s=0.3, max_retries=1))
    upstream.set_default(Turn.hang(after=0))
    try:
        error = await fail(backend)
    finally:
        await backend.aclose()

    assert error.code == "server_error"
    assert error.message == "The request to model backend 'fake' timed out after 0.3s (after 2 attempts)"
    assert error.status is None
    assert len(upstream.chat_requests) == 2


async def test_timeout_then_success_is_retried(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, timeout_s=1.0, max_retries=1))
    upstream.push(Turn.hang(after=0), Turn.reply("fine"))
    try:
        result = await collect(backend.stream_chat(HELLO))
    finally:
        await backend.aclose()
    assert result.content == "fine"


async def test_stall_after_an_empty_first_chunk_is_still_retried(upstream: FakeUpstream) -> None:
    # The leading {"role": "assistant"} chunk shows the caller nothing, so a retry repeats nothing.
    backend = OpenAIBackend(config_for(upstream, timeout_s=1.0, max_retries=1))
    upstream.push(Turn.hang(after=1), Turn.reply("second try"))
    try:
        result = await collect(backend.stream_chat(HELLO))
    finally:
        await backend.aclose()
    assert result.content == "second try"
    assert len(upstream.chat_requests) == 2


async def test_connection_refused_is_server_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = OpenAIBackend(
        BackendConfig(name="fake", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, retry_base_delay_s=0.01)
    )
    try:
        error = await fail(backend)
    finally:
        await backend.aclose()
    assert error.code == "server_error"
    assert "Could not connect to model backend 'fake'" in error.message


async def test_context_overflow_is_invalid_prompt_without_retry(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn.context_overflow())

    error = await fail(backend)

    assert error.code == "invalid_prompt"
    assert error.status == 400
    assert "context" in error.message and "maximum context length is 128000 tokens" in error.message
    assert len(upstream.chat_requests) == 1


async def test_context_overflow_recognized_by_message_alone(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    # vLLM-style: no code, only a message.
    upstream.push(
        Turn.error(400, "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens")
    )

    error = await fail(backend)

    assert error.code == "invalid_prompt"
    assert error.message.startswith("The prompt is too long for the model's context window. The model backend")


async def test_other_400_is_invalid_prompt_with_upstream_message(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.push(Turn.error(400, "Invalid schema for response_format 'x'", code="invalid_value"))

    error = await fail(backend)

    assert error.code == "invalid_prompt"
    assert "HTTP 400: Invalid schema for response_format 'x'" in error.message
    assert not error.message.startswith("The prompt is too long")


async def test_401_is_server_error_without_retry(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.set_default(Turn.error(401, "Incorrect API key provided"))

    error = await fail(backend)

    assert (error.code, error.status) == ("server_error", 401)
    assert "Incorrect API key provided" in error.message
    assert len(upstream.chat_requests) == 1


async def test_non_json_error_body_is_reported(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.set_default(Turn(status=502, error_body=None))

    error = await fail(backend)

    assert error.code == "server_error" and "HTTP 502" in error.message


async def test_connection_dropped_mid_stream_fails_without_retry(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.push(Turn(text="abcdef", chunk_size=1, disconnect_after=3))
    seen: list[str] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in backend.stream_chat(HELLO):
            seen.append(chunk.content)

    assert seen == ["a", "b"]
    assert caught.value.code == "server_error"
    assert caught.value.message.startswith("The connection to model backend 'fake' was lost in the middle")
    assert len(upstream.chat_requests) == 1


async def test_stall_mid_stream_times_out_without_retry(upstream: FakeUpstream) -> None:
    backend = OpenAIBackend(config_for(upstream, timeout_s=0.3))
    upstream.push(Turn.hang(after=2))
    try:
        error = await fail(backend)
    finally:
        await backend.aclose()
    assert error.code == "server_error"
    assert error.message == "The model backend 'fake' stopped sending for 0.3s in the middle of its answer"
    assert len(upstream.chat_requests) == 1


async def test_error_event_inside_the_stream(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    upstream.push(Turn(text="partial", stream_error={"message": "model crashed", "type": "server_error"}))

    error = await fail(backend)

    assert error.code == "server_error"
    assert "model crashed" in error.message
    assert len(upstream.chat_requests) == 1
