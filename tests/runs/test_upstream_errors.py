"""Upstream failures end the run `failed` with OpenAI's `last_error` codes and a readable message."""

from __future__ import annotations

from typing import Any

import openai

from tests.fakes.upstream import FakeUpstream, Turn
from tests.runs.conftest import no_traceback


def _run(client: openai.OpenAI, assistant: Any, **kw: Any) -> tuple[Any, Any]:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hello"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, **kw)
    return thread, run


def test_rate_limit(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.push(*[Turn.error(429, "Rate limit reached for gpt-4o", code="rate_limit_exceeded")] * 3)
    _, run = _run(client, assistant)
    assert run.status == "failed" and run.failed_at is not None
    assert run.last_error is not None and run.last_error.code == "rate_limit_exceeded"
    assert "rate limit" in run.last_error.message.lower()
    no_traceback(run.last_error.message)


def test_server_errors_are_retried_then_fail(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.push(Turn.error(503, "overloaded"), Turn.reply("recovered"))
    _, run = _run(client, assistant)
    assert run.status == "completed"  # one retry is allowed (LOOM_UPSTREAM_MAX_RETRIES=1)
    upstream.push(*[Turn.error(500, "boom")] * 3)
    before = len(upstream.chat_requests)
    _, run = _run(client, assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert len(upstream.chat_requests) - before == 2
    no_traceback(run.last_error.message)


def test_timeout(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    """`slow-model` goes through a backend with a 1 s read timeout and one retry (TOML config)."""
    upstream.push(Turn.hang(after=0), Turn.hang(after=0))
    _, run = _run(client, assistant, model="slow-model")
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    assert "time" in run.last_error.message.lower()
    no_traceback(run.last_error.message)


def test_context_overflow_is_invalid_prompt(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.push(Turn.context_overflow())
    _, run = _run(client, assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "invalid_prompt"
    assert "context" in run.last_error.message.lower()
    no_traceback(run.last_error.message)


def test_failure_mid_stream_leaves_partial_message_incomplete(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    upstream.push(Turn.reply("partial answer", chunk_size=2, disconnect_after=4))
    thread, run = _run(client, assistant)
    assert run.status == "failed"
    assert run.last_error is not None and run.last_error.code == "server_error"
    no_traceback(run.last_error.message)
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.role == "assistant" and message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_failed"
    assert message.content and message.content[0].type == "text" and message.content[0].text.value
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "failed" and step.failed_at is not None
    assert step.last_error is not None and step.last_error.code == "server_error"
    # The thread is usable again.
    upstream.push(Turn.reply("second try"))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
