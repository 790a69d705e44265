"""Kill -9 mid-run: after a restart the run is failed with `server_error`, never stuck (a graceful stop hands
it over instead: it completes elsewhere, or on SQLite after the restart); what it finished
before the crash (steps, messages) is intact; a run waiting for tool outputs survives and continues."""

from __future__ import annotations

from typing import Any

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, server_env, wait_status
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for


def _restartable(backend: str, upstream: FakeUpstream) -> LoomServer:
    url = new_database() if backend == "postgres" else ""
    # A short lease, so a replica notices a dead executor quickly on PostgreSQL.
    return LoomServer(
        database_url=url, upstream_base_url=upstream.base_url, extra_env=server_env(upstream, LOOM_LEASE_S="1")
    )


def _again(server: LoomServer) -> LoomServer:
    """A new process on the same data directory and database, as after a crash and restart."""
    return LoomServer(
        database_url=server.database_url,
        upstream_base_url=server.env["LOOM_UPSTREAM_BASE_URL"],
        data_dir=server.data_dir,
        extra_env={k: v for k, v in server.env.items() if k.startswith("LOOM_")},
    )


def test_kill_9_mid_run_fails_the_run_and_keeps_finished_work(backend: str, upstream: FakeUpstream) -> None:
    first = _restartable(backend, upstream).start()
    try:
        client = sdk_client(first)
        assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather then talk"}])
        # A waiting run: it must survive the crash and take its outputs afterwards.
        waiting_thread = client.beta.threads.create(messages=[{"role": "user", "content": "wait"}])
        upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
        waiting = client.beta.threads.runs.create_and_poll(thread_id=waiting_thread.id, assistant_id=assistant.id)
        assert waiting.status == "requires_action"

        upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Rome"})))
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "requires_action"
        call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
        upstream.push(Turn.hang(after=6))
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "warm"}]
        )

        def streaming() -> Any:
            messages = client.beta.threads.messages.list(thread.id).data
            return messages[0].role == "assistant"

        wait_for(streaming, what="the reply to start")
        assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "in_progress"
    finally:
        first.kill()

    second = _again(first).start()
    try:
        client = sdk_client(second)
        failed = wait_status(client, thread.id, run.id, {"failed", "completed", "cancelled"})
        assert failed.status == "failed"
        assert failed.last_error is not None and failed.last_error.code == "server_error"
        assert "interrupted" in failed.last_error.message
        steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
        assert [(s.type, s.status) for s in steps] == [("tool_calls", "completed"), ("message_creation", "failed")]
        tool_step = steps[0].step_details
        assert tool_step.type == "tool_calls"
        assert tool_step.tool_calls[0].function.output == "warm"  # type: ignore[union-attr]
        messages = client.beta.threads.messages.list(thread.id, order="asc").data
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[1].status == "incomplete"
        assert messages[1].incomplete_details is not None and messages[1].incomplete_details.reason == "run_failed"

        # The thread is free again, and the waiting run was left alone and still works.
        upstream.push(Turn.reply("after restart"))
        assert client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id).status == (
            "completed"
        )
        still = client.beta.threads.runs.retrieve(waiting.id, thread_id=waiting_thread.id)
        assert still.status == "requires_action"
        wcall = still.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
        upstream.push(Turn.reply("Oslo is cold."))
        done = client.beta.threads.runs.submit_tool_outputs_and_poll(
            run_id=waiting.id, thread_id=waiting_thread.id, tool_outputs=[{"tool_call_id": wcall.id, "output": "-3"}]
        )
        assert done.status == "completed"
    finally:
        second.stop()


def test_kill_9_before_the_run_started(backend: str, upstream: FakeUpstream) -> None:
    """A run still `queued`/`in_progress` with no model output yet is failed too, with no step left open."""
    first = _restartable(backend, upstream).start()
    try:
        client = sdk_client(first)
        assistant = client.beta.assistants.create(model="gpt-4o")
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
        upstream.push(Turn.hang(after=0))
        run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        upstream.wait_for_requests(1)
    finally:
        first.kill()
    second = _again(first).start()
    try:
        client = sdk_client(second)
        failed = wait_status(client, thread.id, run.id, {"failed", "cancelled", "completed"})
        assert failed.status == "failed" and failed.last_error is not None
        assert failed.last_error.code == "server_error"
        assert client.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data == []
    finally:
        second.stop()


def test_graceful_stop_mid_run_hands_it_to_another_replica(upstream: FakeUpstream) -> None:
    """SIGTERM to the replica executing a run (a deploy, a scale-down): at its drain timeout it hands the
    run over, and the survivor completes it (a stop never leaves the run `in_progress` for ever, nor
    fails it)."""
    url = new_database()
    env = server_env(upstream, LOOM_LEASE_S="1", LOOM_DRAIN_TIMEOUT_S="1")
    a = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
    b = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
    try:
        client_a, client_b = sdk_client(a), sdk_client(b)
        assistant = client_a.beta.assistants.create(model="gpt-4o")
        thread = client_a.beta.threads.create(messages=[{"role": "user", "content": "x"}])
        upstream.push(Turn.hang(after=0), Turn.reply("Finished on B."))
        run = client_a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        upstream.wait_for_requests(1)
        a.stop()
        try:
            ended = wait_status(client_b, thread.id, run.id, {"failed", "cancelled", "completed"}, timeout=60)
        except AssertionError as exc:  # (seen once under heavy load: say where the run was)
            now = client_b.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
            raise AssertionError(f"{exc}; run {now.status}; A: {a.log()[-3000:]}; B: {b.log()[-3000:]}") from None
        assert ended.status == "completed", (ended.status, ended.last_error)
        steps = client_b.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data
        assert [(s.type, s.status) for s in steps] == [("message_creation", "completed")]
        messages = client_b.beta.threads.messages.list(thread.id, order="asc").data
        assert [m.role for m in messages] == ["user", "assistant"]
    finally:
        a.stop()
        b.stop()


def test_sqlite_drain_mid_run_resumes_it_on_restart(upstream: FakeUpstream) -> None:
    """One replica on SQLite, SIGTERM mid-answer: at the drain timeout the run is handed over (its half
    answer closed), so it is not left `in_progress`, nor failed; the restarted server takes it over and
    completes it from its last committed turn."""
    first = LoomServer(
        upstream_base_url=upstream.base_url,
        extra_env=server_env(upstream, LOOM_LEASE_S="1", LOOM_DRAIN_TIMEOUT_S="1"),
    ).start()
    try:
        client = sdk_client(first)
        assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather then talk"}])
        upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Rome"})))
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "requires_action"
        call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
        upstream.push(Turn.reply("Rome is warm, I think, and", chunk_size=3, gate="half", gate_after=2))
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "warm"}]
        )
        upstream.wait_held("half", 1, timeout=30)
    finally:
        first.stop()
    assert first.proc is not None and first.proc.returncode in (0, -15), first.log()
    upstream.push(Turn.reply("Rome is warm."))
    second = _again(first).start()
    try:
        client = sdk_client(second)
        done = wait_status(client, thread.id, run.id, {"failed", "completed", "cancelled", "expired"})
        assert done.status == "completed", (done.status, done.last_error)
        steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
        assert [(s.type, s.status) for s in steps] == [
            ("tool_calls", "completed"),
            ("message_creation", "cancelled"),
            ("message_creation", "completed"),
        ]
        messages = client.beta.threads.messages.list(thread.id, order="asc").data
        assert [(m.role, m.status) for m in messages] == [
            ("user", "completed"),
            ("assistant", "incomplete"),
            ("assistant", "completed"),
        ]
        text = messages[2].content[0]
        assert text.type == "text" and text.text.value == "Rome is warm."
        # The resumed call had the tool's output and not the half answer.
        last = upstream.requests[-1].messages
        assert last[-1] == {"role": "tool", "tool_call_id": call.id, "content": "warm"}, last
    finally:
        second.stop()
        upstream.release("half")
