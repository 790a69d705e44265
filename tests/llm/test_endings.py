"""Honest endings: an answer is over only when the upstream says so; only transient failures are retried;
what the upstream said goes to the log, a short line of it to the error."""

from __future__ import annotations

import logging

import pytest

from loom.llm import ChatRequest, OpenAIBackend, UpstreamError, collect
from loom.llm.error_mapping import one_line
from tests.fakes.upstream import FakeUpstream, Turn

HELLO = ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])

TRACEBACK = """Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/llama_cpp/server/errors.py", line 173, in custom_route_handler
    response = await original_route_handler(request)
  File "/opt/venv/lib/python3.11/site-packages/jinja2/environment.py", line 1295, in render
    self.environment.handle_exception()
TypeError: can only concatenate str (not "NoneType") to str in /opt/venv/lib/python3.11/site-packages/x.py"""


async def test_a_stream_that_stops_mid_answer_fails(upstream: FakeUpstream, backend: OpenAIBackend) -> None:
    # Headers, the role chunk, two pieces of text, then the response ends: no finish reason, no [DONE].
    upstream.push(Turn.reply("abcdef", chunk_size=1, end_after=3))
    seen: list[str] = []

    with pytest.raises(UpstreamError) as caught:
        async for chunk in backend.stream_chat(HELLO):
            seen.append(chunk.content)

    assert seen == ["a", "b"]
    assert caught.value.code == "server_error"
    assert caught.value.message == (
        "The model backend 'fake' ended its response in the middle of its answer (no finish reason)"
    )
    assert len(upstream.chat_requests) == 1  # text was shown: a retry would repeat it


@pytest.mark.parametrize("events", [0, 1])
async def test_a_stream_with_nothing_in_it_is_retried(
    upstream: FakeUpstream, backend: OpenAIBackend, events: int
) -> None:
    # 0: 200 and the stream's headers, then the end; 1: only the empty role chunk before the end.
    upstream.push(Turn.reply("lost", end_after=events), Turn.reply("second try"))

    result = await collect(backend.stream_chat(HELLO))

    assert (result.content, result.finish_reason) == ("second try", "stop")
    assert len(upstream.chat_requests) == 2


async def test_a_stream_with_nothing_in_it_fails_after_the_retries(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    upstream.set_default(Turn.reply("lost", end_after=0))

    with pytest.raises(UpstreamError) as caught:
        await collect(backend.stream_chat(HELLO))

    assert caught.value.code == "server_error"
    assert caught.value.message == (
        "The model backend 'fake' ended its response without sending an answer (no chunk, no finish reason)"
        " (after 3 attempts)"
    )


async def test_a_trailer_lost_after_the_finish_reason_keeps_the_answer(
    upstream: FakeUpstream, backend: OpenAIBackend
) -> None:
    # role, text, finish — then the connection drops before the usage chunk and [DONE].
    upstream.push(Turn.reply("whole", disconnect_after=3))

    result = await collect(backend.stream_chat(HELLO))

    assert (result.content, result.finish_reason, result.usage) == ("whole", "stop", None)


async def test_a_500_that_repeats_a_validation_error_is_not_retried(
    upstream: FakeUpstream, backend: OpenAIBackend, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.set_default(Turn.error(500, TRACEBACK, type="internal_server_error"))

    with caplog.at_level(logging.WARNING, logger="loom.llm"), pytest.raises(UpstreamError) as caught:
        await collect(backend.stream_chat(HELLO))

    assert len(upstream.chat_requests) == 1
    message = caught.value.message
    assert caught.value.code == "server_error"
    assert message == (
        "The model backend 'fake' returned HTTP 500: TypeError: can only concatenate str (not \"NoneType\") to str in …"
    )
    assert "\n" not in message and "/opt/venv" not in message and "Traceback" not in message
    # The whole story is in the server's log instead.
    assert any("/opt/venv/lib/python3.11/site-packages/jinja2/environment.py" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "message",
    [
        "1 validation error for CreateChatCompletionRequest messages.1.content",
        "Tool with name 'x' not found in tools",
        "Jinja template error: unexpected end of template",
    ],
)
async def test_500s_that_say_the_request_is_wrong_are_not_retried(
    upstream: FakeUpstream, backend: OpenAIBackend, message: str
) -> None:
    upstream.set_default(Turn.error(500, message))

    with pytest.raises(UpstreamError):
        await collect(backend.stream_chat(HELLO))

    assert len(upstream.chat_requests) == 1


@pytest.mark.parametrize("message", ["boom", "Server overloaded, please try again", "upstream connect error"])
async def test_500s_that_look_transient_are_retried(
    upstream: FakeUpstream, backend: OpenAIBackend, message: str
) -> None:
    upstream.push(Turn.error(500, message), Turn.reply("fine"))

    result = await collect(backend.stream_chat(HELLO))

    assert result.content == "fine"
    assert len(upstream.chat_requests) == 2


def test_one_line() -> None:
    assert one_line("  plain   message\n\nsecond line ") == "plain message second line"
    assert one_line("x" * 1000).endswith("…") and len(one_line("x" * 1000)) == 300
    assert one_line("cannot open C:\\Users\\me\\models\\m.gguf now") == "cannot open … now"
    assert one_line("") == "no message"


@pytest.mark.parametrize(("status", "attempts"), [(501, 1), (502, 3), (503, 3), (504, 3), (505, 1), (529, 3)])
async def test_which_5xx_are_retried(
    upstream: FakeUpstream, backend: OpenAIBackend, status: int, attempts: int
) -> None:
    upstream.set_default(Turn.error(status, "nope"))

    with pytest.raises(UpstreamError) as caught:
        await collect(backend.stream_chat(HELLO))

    assert caught.value.code == "server_error" and caught.value.status == status
    assert len(upstream.chat_requests) == attempts
