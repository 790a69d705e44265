"""Two `loom serve` replicas on one PostgreSQL: any replica can stream, cancel and continue any run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, server_env, wait_status
from tests.runs.test_streaming import Recorder, squeeze
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def replicas(upstream: FakeUpstream) -> Iterator[tuple[LoomServer, LoomServer]]:
    url = new_database()
    # A long lease: A renews it (and so would notice a cancel by itself) only every 10 s, so a cancel
    # finished within a few seconds came through NOTIFY.
    env = server_env(upstream, LOOM_LEASE_S="30")
    a = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
    try:
        b = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def _waiting_run(client: Any, upstream: FakeUpstream) -> tuple[Any, Any, Any]:
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Lyon"})))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    return assistant, thread, run


def test_created_on_a_streamed_with_tool_outputs_on_b(
    replicas: tuple[LoomServer, LoomServer], upstream: FakeUpstream
) -> None:
    a, b = (sdk_client(s) for s in replicas)
    _, thread, run = _waiting_run(a, upstream)
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    upstream.push(Turn.reply("Lyon is mild.", chunk_size=3))
    handler = Recorder()
    with b.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "mild"}],
        event_handler=handler,
    ) as stream:
        stream.until_done()
    assert squeeze(handler.events)[:3] == ["thread.run.step.completed", "thread.run.queued", "thread.run.in_progress"]
    assert handler.get_final_run().status == "completed" and handler.text == "Lyon is mild."
    seen_on_a = a.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert seen_on_a.status == "completed" and seen_on_a.usage is not None
    assert a.beta.threads.messages.list(thread.id).data[0].content[0].text.value == "Lyon is mild."  # type: ignore[union-attr]


def test_tool_outputs_through_b(replicas: tuple[LoomServer, LoomServer], upstream: FakeUpstream) -> None:
    a, b = (sdk_client(s) for s in replicas)
    _, thread, run = _waiting_run(a, upstream)
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    upstream.push(Turn.reply("Done on B."))
    done = b.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "ok"}]
    )
    assert done.status == "completed"
    assert a.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"


def test_cancel_through_b_while_a_executes(replicas: tuple[LoomServer, LoomServer], upstream: FakeUpstream) -> None:
    a, b = (sdk_client(s) for s in replicas)
    assistant = a.beta.assistants.create(model="gpt-4o")
    thread = a.beta.threads.create(messages=[{"role": "user", "content": "long story"}])
    upstream.push(Turn.hang(after=5))
    run = a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    wait_for(lambda: a.beta.threads.messages.list(thread.id).data[0].role == "assistant", what="A to start replying")
    cancelling = b.beta.threads.runs.cancel(run.id, thread_id=thread.id)
    assert cancelling.status == "cancelling"
    # Only A's executor can close the model call; it hears of the cancel through NOTIFY, long before
    # its next lease renewal would have shown it the `cancelling` status.
    final = wait_status(b, thread.id, run.id, {"cancelled", "failed"}, timeout=6)
    assert final.status == "cancelled" and final.last_error is None
    message = b.beta.threads.messages.list(thread.id).data[0]
    assert message.status == "incomplete"
    assert message.incomplete_details is not None and message.incomplete_details.reason == "run_cancelled"
