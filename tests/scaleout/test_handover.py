"""A draining replica hands the runs it executes over: a run still mid-answer when replica A's drain times
out is stopped there at a turn it can commit cleanly and completes on replica B, from its last committed
turn, with every step and tool call once and its usage summed once; the client sees one run."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.code_interpreter.conftest import new_thread, require_sandbox
from tests.conftest import s3_blob_env, sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.scaleout.conftest import Cluster
from tests.support.postgres import new_database
from tests.support.seaweed import SeaweedS3
from tests.support.wait import wait_for

DRAIN_S = 3.0


@pytest.fixture()
def drain_cluster(upstream: FakeUpstream, seaweed: SeaweedS3) -> Iterator[Cluster]:
    """Replica A drains quickly (LOOM_DRAIN_TIMEOUT_S=3); replica B as usual."""
    require_sandbox()
    made = Cluster(new_database(), [], s3_blob_env(seaweed))
    try:
        made.add(upstream, {"LOOM_DRAIN_TIMEOUT_S": str(DRAIN_S)})
        made.add(upstream)
        yield made
    finally:
        made.stop()


def _watch(client: openai.OpenAI, thread_id: str, assistant_id: str, names: list[str], ended: list[str]) -> str:
    """Create a streaming run on `client`'s replica; its events' names are collected by a thread."""
    stream = client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant_id, stream=True)
    first = next(iter(stream))
    assert first.event == "thread.run.created"
    run_id = first.data.id

    def read() -> None:
        try:
            for event in stream:
                names.append(event.event)
            ended.append("ended")
        except (httpx.HTTPError, openai.APIError) as exc:  # the server went away mid-stream
            ended.append(type(exc).__name__)
        finally:
            stream.close()

    threading.Thread(target=read, daemon=True).start()
    return run_id


def test_a_draining_replica_hands_a_running_run_over(drain_cluster: Cluster, upstream: FakeUpstream) -> None:
    a, b = drain_cluster.replicas
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = on_a.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}]).id
    thread = new_thread(on_a)
    before = len(upstream.requests)
    upstream.push(
        # A's first turn: code, run once, its output committed on A.
        Turn.calls(ToolCallSpec("code_interpreter", {"code": "print(6 * 7)"}), usage=_usage(100, 10)),
        # A's second turn: slow, held mid-answer until A's drain times out (its usage is never sent).
        Turn.reply("The answer, worked out slowly, is", chunk_size=4, gate="slow", gate_after=2, usage=_usage(1, 1)),
        # B's turn, once it took the run over.
        Turn.reply("The answer is 42.", usage=_usage(200, 20)),
    )
    names: list[str] = []
    ended: list[str] = []
    run_id = _watch(on_a, thread, assistant, names, ended)
    upstream.wait_held("slow", 1, timeout=60)
    assert on_b.beta.threads.runs.retrieve(run_id, thread_id=thread).status == "in_progress"
    assert a.proc is not None
    a.proc.terminate()  # SIGTERM, to our own child
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while (run := on_b.beta.threads.runs.retrieve(run_id, thread_id=thread)).status not in ("completed", "failed"):
        seen.append(run.status)
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    assert run.status == "completed", (run.status, run.last_error)
    # A poll sees one run: in progress, then completed.
    assert set(seen) <= {"in_progress"}, seen
    # Handed over at A's drain timeout, not left for a sweep to find after the lease lapsed.
    assert a.proc.wait(30) in (0, -signal.SIGTERM)
    # Every step once: the code ran once (on A), the interrupted answer closed, B's answer completed.
    steps = on_b.beta.threads.runs.steps.list(run_id, thread_id=thread, order="asc").data
    assert [(s.type, s.status) for s in steps] == [
        ("tool_calls", "completed"),
        ("message_creation", "cancelled"),
        ("message_creation", "completed"),
    ], steps
    assert len({s.id for s in steps}) == 3
    details = steps[0].step_details
    assert details.type == "tool_calls" and len(details.tool_calls) == 1
    call = details.tool_calls[0]
    assert call.type == "code_interpreter" and call.code_interpreter.outputs[0].type == "logs"
    assert call.code_interpreter.outputs[0].logs == "42\n"
    assert steps[1].last_error is None
    # Usage summed once: A's committed turn and B's turn (the interrupted turn reported none).
    assert run.usage is not None
    assert (run.usage.prompt_tokens, run.usage.completion_tokens, run.usage.total_tokens) == (300, 30, 330)
    assert steps[0].usage is not None and steps[0].usage.total_tokens == 110
    assert steps[2].usage is not None and steps[2].usage.total_tokens == 220
    # B's model call went on from the last committed turn: the tool call and its output, not the half answer.
    requests = upstream.requests[before:]
    assert len(requests) == 3, [r.messages for r in requests]
    resumed = requests[2].messages
    assert [m["role"] for m in resumed[-3:]] == ["user", "assistant", "tool"], resumed
    assert resumed[-1]["content"] == "42\n"
    assert not any("slowly" in str(m.get("content")) for m in resumed), resumed
    # The thread's messages: the user's, the interrupted answer (incomplete), B's answer, each once.
    messages = on_b.beta.threads.messages.list(thread_id=thread, order="asc").data
    assert [(m.role, m.status) for m in messages] == [
        ("user", "completed"),
        ("assistant", "incomplete"),
        ("assistant", "completed"),
    ]
    assert messages[1].incomplete_details is not None
    text = messages[2].content[0]
    assert text.type == "text" and text.text.value == "The answer is 42."
    # The stream attached to A ended there, before the run did.
    wait_for(lambda: bool(ended), 30, "A's stream to end")
    assert "thread.message.incomplete" in names and "thread.run.step.cancelled" in names, names
    assert not {"thread.run.completed", "thread.run.failed"} & set(names), names
    # The thread stays usable (on B).
    upstream.push(Turn.reply("Still here."))
    after = on_b.beta.threads.runs.create_and_poll(thread_id=thread, assistant_id=assistant, poll_interval_ms=50)
    assert after.status == "completed", (after.status, after.last_error)
    upstream.release("slow")


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def test_a_run_hands_over_at_its_next_turn_boundary(drain_cluster: Cluster, upstream: FakeUpstream) -> None:
    """Once A drains, a run executing there finishes the turn in flight (its code runs on A) and goes on
    elsewhere from the next model call, without waiting for A's drain timeout: B's turn, slower than that
    timeout, completes, and no turn was interrupted."""
    a, b = drain_cluster.replicas
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = on_a.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}]).id
    thread = new_thread(on_a)
    slow = "Computed: forty-two, and nothing else."
    upstream.push(
        Turn.calls(ToolCallSpec("code_interpreter", {"code": "print(6 * 7)"}), arguments_chunk_size=4, gate="code"),
        # Longer than twice A's drain timeout (uvicorn's wait for open connections, then the lifespan's for
        # runs): only a replica that is not draining can finish it.
        Turn.reply(slow, chunk_size=2, chunk_delay_s=(2 * DRAIN_S + 2) / (len(slow) / 2)),
    )
    run = on_a.beta.threads.runs.create(thread_id=thread, assistant_id=assistant)
    upstream.wait_held("code", 1, timeout=60)
    assert a.proc is not None
    a.proc.terminate()  # SIGTERM, to our own child
    time.sleep(0.3)
    upstream.release("code")
    deadline = time.monotonic() + 60
    while (current := on_b.beta.threads.runs.retrieve(run.id, thread_id=thread)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert current.status == "completed", (current.status, current.last_error)
    steps = on_b.beta.threads.runs.steps.list(run.id, thread_id=thread, order="asc").data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "completed"), ("message_creation", "completed")]
    details = steps[0].step_details
    assert details.type == "tool_calls" and details.tool_calls[0].type == "code_interpreter"
    assert details.tool_calls[0].code_interpreter.outputs[0].logs == "42\n"  # type: ignore[union-attr]
    text = on_b.beta.threads.messages.list(thread_id=thread, order="desc", limit=1).data[0].content[0]
    assert text.type == "text" and text.text.value == slow
    assert a.proc.wait(30) in (0, -signal.SIGTERM)
