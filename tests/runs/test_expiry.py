"""A run left in `requires_action` past `expires_at` becomes `expired` (LOOM_RUN_EXPIRY_S small here)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, server_env, wait_status
from tests.support.server import LoomServer


@pytest.fixture(scope="module")
def expiring_server(upstream: FakeUpstream) -> Iterator[LoomServer]:
    server = LoomServer(
        upstream_base_url=upstream.base_url, extra_env=server_env(upstream, LOOM_RUN_EXPIRY_S="2", LOOM_LEASE_S="1")
    )
    with server:
        yield server


def test_unanswered_tool_calls_expire_the_run(expiring_server: LoomServer, upstream: FakeUpstream) -> None:
    client = sdk_client(expiring_server)
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Kyiv"})))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action"
    # expires_at counts from when the run began to wait.
    assert run.expires_at is not None and 2 <= run.expires_at - run.created_at <= 4
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    expired = wait_status(client, thread.id, run.id, {"expired"})
    assert expired.expires_at is None and expired.required_action is None
    step = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    assert step.status == "expired" and step.expired_at is not None
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "late"}]
        )
    assert info.value.message.endswith('Runs in status "expired" do not accept tool outputs.')
    # The thread takes new runs again.
    upstream.push(Turn.reply("fresh"))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
