"""Long runs (issue 12 §4, opt-in by metadata): an execution may run past the server's sandbox timeout when
its assistant or run allows it, keeps its run's lease alive meanwhile, and streams what it prints as it
comes; runs of a thread with concurrent runs take turns on its session."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.code_interpreter.conftest import CI_ENV, require_sandbox
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn, declarative_predicate
from tests.support.server import LoomServer

# Short leases (renewed every ~0.33 s, swept every 0.5 s) and a short server-wide execution timeout.
LEASE_S = 1
SERVER_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def long_server(upstream: FakeUpstream) -> Iterator[LoomServer]:
    require_sandbox()
    env = {**CI_ENV, "LOOM_SANDBOX_TIMEOUT_S": str(SERVER_TIMEOUT_S), "LOOM_LEASE_S": str(LEASE_S)}
    with LoomServer(upstream_base_url=upstream.base_url, extra_env=env) as server:
        yield server


@pytest.fixture()
def client(long_server: LoomServer) -> openai.OpenAI:
    return sdk_client(long_server, timeout=120)


TICK_TOCK = "import time\nprint('tick', flush=True)\ntime.sleep(3)\nprint('tock', flush=True)\n"


def _tool_call(client: openai.OpenAI, thread_id: str, run_id: str) -> Any:
    """The run's one code-interpreter call."""
    steps = client.beta.threads.runs.steps.list(thread_id=thread_id, run_id=run_id)
    (call,) = next(s for s in steps if s.step_details.type == "tool_calls").step_details.tool_calls  # type: ignore[union-attr]
    return call


def _streamed_logs(event: Any) -> list[str]:
    """The `logs` pieces a `thread.run.step.delta` event carries."""
    found = []
    for call in event.data.delta.step_details.tool_calls or []:
        for out in getattr(getattr(call, "code_interpreter", None), "outputs", None) or []:
            if out.type == "logs" and out.logs:
                found.append(out.logs)
    return found


def test_a_long_execution_keeps_its_lease_and_streams_its_output(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant = client.beta.assistants.create(
        model="gpt-4o", tools=[{"type": "code_interpreter"}], metadata={"loom_max_execution_seconds": "10"}
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Take your time."}])
    upstream.push(Turn.calls(ToolCallSpec("code_interpreter", {"code": TICK_TOCK})), Turn.reply("Done."))
    logs: list[tuple[float, str]] = []
    statuses = []
    with client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, stream=True) as events:
        for event in events:
            if event.event == "thread.run.step.delta":
                logs += [(time.monotonic(), text) for text in _streamed_logs(event)]
            elif event.event.startswith("thread.run.") and not event.event.startswith("thread.run.step"):
                statuses.append(event.data.status)  # type: ignore[union-attr]
                run_id = event.data.id  # type: ignore[union-attr]
    # The 3 s execution outlived the server's 2 s timeout (the assistant allows 10 s) and three lease
    # periods: its run was neither failed by the sweep nor timed out.
    assert statuses[-1] == "completed", statuses
    assert "".join(text for _, text in logs) == "tick\ntock\n"
    # 'tick' was streamed while the code slept, not with 'tock' at the end.
    (tick_at,) = [at for at, text in logs if "tick" in text]
    (tock_at,) = [at for at, text in logs if "tock" in text]
    assert "tock" not in next(text for _, text in logs if "tick" in text)
    assert tock_at - tick_at > 2.0, logs
    call = _tool_call(client, thread.id, run_id)
    assert [o.logs for o in call.code_interpreter.outputs] == ["tick\ntock\n"]


def test_the_server_timeout_still_holds_without_the_option(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Take your time."}])
    upstream.push(Turn.calls(ToolCallSpec("code_interpreter", {"code": TICK_TOCK})), Turn.reply("Done."))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50)
    assert run.status == "completed"
    call = _tool_call(client, thread.id, run.id)
    logs = call.code_interpreter.outputs[0].logs
    assert logs.startswith("tick\n") and "tock" not in logs and f"timed out after {SERVER_TIMEOUT_S} s" in logs


MARKERS = (
    "import time\n"
    "open('/mnt/data/markers.txt', 'a').write('start {name}\\n')\n"
    "time.sleep(1)\n"
    "open('/mnt/data/markers.txt', 'a').write('end {name}\\n')\n"
    "print('{name}')\n"
)


def test_runs_of_one_thread_take_turns_on_its_session(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "Go."}], metadata={"loom_concurrent_runs": "true"}
    )
    for name in ("A", "B"):
        code = MARKERS.format(name=name)
        upstream.add_rule(
            declarative_predicate({"last_content_contains": f"run {name}"}),
            Turn.calls(ToolCallSpec("code_interpreter", {"code": code})),
        )
    upstream.add_rule(declarative_predicate({"last_role": "tool"}), Turn.reply("Done."))

    def run(name: str) -> Any:
        return client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=assistant.id,
            additional_messages=[{"role": "user", "content": f"run {name}"}],
            poll_interval_ms=50,
        )

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(run, ["A", "B"]))
    assert [r.status for r in runs] == ["completed", "completed"]
    upstream.reset()
    upstream.push(
        Turn.calls(ToolCallSpec("code_interpreter", {"code": "print(open('/mnt/data/markers.txt').read())"})),
        Turn.reply("Read."),
    )
    reader = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    call = _tool_call(client, thread.id, reader.id)
    lines = call.code_interpreter.outputs[0].logs.split()
    # Both executions ran in the one session, one after the other: the markers never interleave.
    assert lines in (
        ["start", "A", "end", "A", "start", "B", "end", "B"],
        ["start", "B", "end", "B", "start", "A", "end", "A"],
    ), lines
