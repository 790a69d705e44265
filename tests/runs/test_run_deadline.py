"""A run ends at its `expires_at` (LOOM_RUN_MAX_DURATION_S, 3 s here) however slowly the model writes:
status `expired` with no `last_error`, the partial message `incomplete` (`run_expired`), its step `expired`,
the model's stream closed; streamed clients get `thread.run.expired` then `done`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, server_env, wait_status
from tests.runs.test_streaming import _frames, _stream_run, squeeze
from tests.support.postgres import database_url_for, new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for

LIMIT_S = 3
# One token a second for 40 s: far past the limit.
TRICKLE = Turn.reply("tick " * 40, chunk_size=5, chunk_delay_s=1.0)


@pytest.fixture(scope="module")
def deadline_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    env = server_env(upstream, LOOM_RUN_MAX_DURATION_S=str(LIMIT_S), LOOM_LEASE_S="3")
    with LoomServer(
        database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env
    ) as server:
        yield server


def _check_expired_records(client: openai.OpenAI, thread_id: str, run_id: str) -> None:
    run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
    assert run.status == "expired" and run.last_error is None and run.incomplete_details is None
    assert run.expires_at is None and run.required_action is None
    steps = client.beta.threads.runs.steps.list(run_id, thread_id=thread_id).data
    assert steps and steps[0].type == "message_creation"
    assert steps[0].status == "expired" and steps[0].expired_at is not None
    message = client.beta.threads.messages.list(thread_id, run_id=run_id).data[0]
    assert message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_expired"
    text = message.content[0].text.value  # type: ignore[union-attr]
    assert text.startswith("tick") and len(text) < len("tick " * 40)


def test_streamed_run_ends_expired_at_its_deadline(
    deadline_server: LoomServer, upstream: FakeUpstream, backend: str
) -> None:
    client = sdk_client(deadline_server)
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "talk slowly"}])
    upstream.push(TRICKLE)
    with _stream_run(deadline_server, thread.id, assistant.id) as response:
        frames, _raw = _frames(response)
    names = squeeze([n for n, _ in frames])
    assert names == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.delta",
        "thread.message.incomplete",
        "thread.run.step.expired",
        "thread.run.expired",
        "done",
    ]
    created = frames[0][1]
    assert created["expires_at"] == created["created_at"] + LIMIT_S
    final = dict(frames)["thread.run.expired"]
    assert final["status"] == "expired" and final["last_error"] is None and final["expires_at"] is None
    # It ended at the deadline (whole seconds), not when the model finished (40 s).
    assert time.time() - created["created_at"] < LIMIT_S + 4
    incomplete = dict(frames)["thread.message.incomplete"]
    assert incomplete["incomplete_details"] == {"reason": "run_expired"}
    step = dict(frames)["thread.run.step.expired"]
    assert step["status"] == "expired" and step["expired_at"] is not None and step["last_error"] is None
    # The model's stream was closed when the run expired.
    wait_for(lambda: upstream.open_streams == 0, 5, "the upstream stream to be closed")
    _check_expired_records(client, thread.id, final["id"])
    # The thread takes new runs.
    upstream.push(Turn.reply("quick"))
    assert client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id).status == (
        "completed"
    )


def test_polled_run_ends_expired_at_its_deadline(deadline_server: LoomServer, upstream: FakeUpstream) -> None:
    client = sdk_client(deadline_server)
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "talk slowly"}])
    upstream.push(TRICKLE)
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert run.expires_at == run.created_at + LIMIT_S
    done = client.beta.threads.runs.poll(run.id, thread_id=thread.id)
    assert done.status == "expired"
    assert time.time() - run.created_at < LIMIT_S + 4
    wait_for(lambda: upstream.open_streams == 0, 5, "the upstream stream to be closed")
    _check_expired_records(client, thread.id, run.id)


def test_a_resumed_run_gets_the_whole_duration_again(deadline_server: LoomServer, upstream: FakeUpstream) -> None:
    client = sdk_client(deadline_server)
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather, slowly"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Turin"})))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    time.sleep(LIMIT_S)  # past the first deadline: waiting for outputs has its own (LOOM_RUN_EXPIRY_S)
    upstream.push(TRICKLE)
    submitted = int(time.time())
    resumed = client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "fog"}]
    )
    assert resumed.status == "queued" and resumed.expires_at is not None
    assert submitted + LIMIT_S <= resumed.expires_at <= submitted + LIMIT_S + 1
    # It streams first, then expires at the new deadline.
    wait_for(lambda: client.beta.threads.messages.list(thread.id).data[0].role == "assistant", 5, "the reply")
    done = wait_status(client, thread.id, run.id, {"expired", "completed", "failed"}, timeout=15)
    assert done.status == "expired" and done.last_error is None
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "completed"), ("message_creation", "expired")]


def test_the_sweep_of_another_replica_expires_a_dead_replicas_run(upstream: FakeUpstream) -> None:
    """The executing replica is killed; its lease (30 s) outlives the deadline, so no replica may treat
    the run as orphaned yet, but the other replica's sweep ends it `expired` soon after `expires_at`."""
    url = new_database()
    a = LoomServer(
        database_url=url,
        upstream_base_url=upstream.base_url,
        extra_env=server_env(upstream, LOOM_RUN_MAX_DURATION_S=str(LIMIT_S), LOOM_LEASE_S="30"),
    ).start()
    try:
        client_a = sdk_client(a)
        assistant = client_a.beta.assistants.create(model="gpt-4o")
        thread = client_a.beta.threads.create(messages=[{"role": "user", "content": "talk slowly"}])
        upstream.push(TRICKLE)
        run = client_a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)

        def saved_text() -> bool:
            latest = client_a.beta.threads.messages.list(thread.id).data[0]
            return latest.role == "assistant" and bool(latest.content)

        wait_for(saved_text, 5, "some of the reply to be saved")
    finally:
        a.kill()
    b = LoomServer(
        database_url=url,
        upstream_base_url=upstream.base_url,
        extra_env=server_env(upstream, LOOM_RUN_MAX_DURATION_S=str(LIMIT_S), LOOM_LEASE_S="1"),
    ).start()
    try:
        client_b = sdk_client(b)
        done: Any = wait_status(client_b, thread.id, run.id, {"expired", "failed", "completed"}, timeout=15)
        assert done.status == "expired" and done.last_error is None
        assert time.time() < run.created_at + 25  # long before A's lease would have lapsed
        _check_expired_records(client_b, thread.id, run.id)
    finally:
        b.stop()
