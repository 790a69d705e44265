"""Concurrent runs on one thread (opt-in, `loom_concurrent_runs`): each run sees the thread as it was when it
was created plus its own work; messages may be added meanwhile; cancel and tool outputs address one run."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn, declarative_predicate
from tests.runs.conftest import server_env, wait_status
from tests.support.server import LoomServer
from tests.support.wait import wait_for

OPT_IN = {"loom_concurrent_runs": "true"}


def _stream(client: openai.OpenAI, thread_id: str, **kwargs: Any) -> list[Any]:
    """Every event of a streamed run creation, read to its end."""
    with client.beta.threads.runs.create(thread_id=thread_id, stream=True, **kwargs) as events:
        return list(events)


def _submit_stream(client: openai.OpenAI, thread_id: str, run_id: str, outputs: list[Any]) -> list[Any]:
    with client.beta.threads.runs.submit_tool_outputs(
        run_id, thread_id=thread_id, tool_outputs=outputs, stream=True
    ) as events:
        return list(events)


def _user_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def _requests_with(upstream: FakeUpstream, text: str) -> list[list[dict[str, Any]]]:
    """What each model call whose last message was the user's `text` was sent."""
    return [r.messages for r in upstream.chat_requests if r.messages[-1] == {"role": "user", "content": text}]


def _run_ids(events: list[Any]) -> set[str]:
    """The runs the events are about (deltas name none)."""
    ids: set[str] = set()
    for event in events:
        name, data = event.event, event.data
        if name.endswith(".delta"):
            continue
        if name.startswith("thread.run.step.") or name.startswith("thread.message."):
            ids.add(data.run_id)
        elif name.startswith("thread.run."):
            ids.add(data.id)
    return ids


def test_two_streamed_runs_in_parallel_each_see_their_own_view(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Q0"}], metadata=OPT_IN)
    # Run A calls the client's function, then answers once it has the output; run B writes its
    # answer slowly, held mid-stream until the test lets it go on.
    upstream.add_rule(
        declarative_predicate({"last_content_contains": "from A"}),
        Turn.calls(ToolCallSpec("get_weather", {"city": "Lima"})),
    )
    upstream.add_rule(declarative_predicate({"last_role": "tool"}), Turn.reply("A is done.", chunk_size=3))
    upstream.add_rule(
        declarative_predicate({"last_content_contains": "from B"}),
        Turn.reply("B answers slowly.", chunk_size=2, gate="B", gate_after=3),
    )
    with ThreadPoolExecutor(2) as pool:
        a_events = pool.submit(
            _stream,
            client,
            thread.id,
            assistant_id=assistant.id,
            additional_messages=[{"role": "user", "content": "from A"}],
        ).result(timeout=30)
        a_run = next(e.data for e in a_events if e.event == "thread.run.requires_action")
        assert client.beta.threads.runs.retrieve(a_run.id, thread_id=thread.id).status == "requires_action"
        # B starts while A waits for its tool outputs: the thread holds two active runs.
        b_future: Future[list[Any]] = pool.submit(
            _stream,
            client,
            thread.id,
            assistant_id=assistant.id,
            additional_messages=[{"role": "user", "content": "from B"}],
        )
        upstream.wait_held("B", timeout=30)
        b_run = next(r for r in client.beta.threads.runs.list(thread_id=thread.id).data if r.id != a_run.id)
        assert b_run.status == "in_progress"
        # A user message while both are active (opted-in threads only).
        late = client.beta.threads.messages.create(thread.id, role="user", content="late")
        # Tool outputs go to A alone; it completes while B is still writing.
        calls = a_run.required_action.submit_tool_outputs.tool_calls
        a_more = _submit_stream(client, thread.id, a_run.id, [{"tool_call_id": calls[0].id, "output": "sunny"}])
        assert client.beta.threads.runs.retrieve(a_run.id, thread_id=thread.id).status == "completed"
        assert client.beta.threads.runs.retrieve(b_run.id, thread_id=thread.id).status == "in_progress"
        upstream.release("B")
        b_events = b_future.result(timeout=30)
    assert _run_ids(a_events + a_more) == {a_run.id}
    assert _run_ids(b_events) == {b_run.id}
    assert [e.event for e in b_events if e.event.startswith("thread.run.")][-1] == "thread.run.completed"

    # What each model call was sent: the thread as it was when its run was created, plus its own work.
    (a_first,) = _requests_with(upstream, "from A")
    assert _user_texts(a_first) == ["Q0", "from A"]
    a_second = next(r for r in upstream.chat_requests if r.messages[-1]["role"] == "tool").messages
    assert _user_texts(a_second) == ["Q0", "from A"]  # not B's message, not the late one
    assert [m["role"] for m in a_second if m["role"] != "system"] == ["user", "user", "assistant", "tool"]
    assert a_second[-1] == {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}
    (b_first,) = _requests_with(upstream, "from B")
    assert _user_texts(b_first) == ["Q0", "from A", "from B"]  # A's message was there when B was made
    assert not [m for m in b_first if m["role"] in ("assistant", "tool")]  # nothing of A's work
    assert "A is done." not in str(b_first) and "late" not in _user_texts(b_first)

    # The thread has everything, in the order it was written; a new run sees it all.
    listed = client.beta.threads.messages.list(thread.id, order="asc").data
    texts = [m.content[0].text.value for m in listed]  # type: ignore[union-attr]
    assert texts[:3] == ["Q0", "from A", "from B"]
    assert set(texts[3:]) == {"late", "A is done.", "B answers slowly."}
    assert texts.index("late") < texts.index("A is done.")
    assert [m.id for m in listed].index(late.id) == texts.index("late")
    upstream.push(Turn.reply("All seen."))
    final = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert final.status == "completed"
    sent = upstream.chat_requests[-1].messages
    assert [m["content"] for m in sent if m["role"] != "system"] == texts


def test_cancel_one_of_two_runs(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Q0"}], metadata=OPT_IN)
    upstream.add_rule(
        declarative_predicate({"last_content_contains": "first"}),
        Turn.reply("one two three", chunk_size=2, gate="1", gate_after=3),
    )
    upstream.add_rule(
        declarative_predicate({"last_content_contains": "second"}), Turn.reply("four five", chunk_size=2, gate="2")
    )
    first = client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant.id, additional_messages=[{"role": "user", "content": "first"}]
    )
    upstream.wait_held("1", timeout=30)
    # (Its answer is begun before it is cancelled.)
    wait_for(lambda: client.beta.threads.messages.list(thread.id, run_id=first.id).data, 20, "the first answer")
    second = client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant.id, additional_messages=[{"role": "user", "content": "second"}]
    )
    upstream.wait_held("2", timeout=30)
    client.beta.threads.runs.cancel(first.id, thread_id=thread.id)
    assert wait_status(client, thread.id, first.id, {"cancelled"}).cancelled_at is not None
    assert client.beta.threads.runs.retrieve(second.id, thread_id=thread.id).status == "in_progress"
    upstream.release("2")
    done = wait_status(client, thread.id, second.id, {"completed", "failed"})
    assert done.status == "completed", done.last_error
    (answer,) = client.beta.threads.messages.list(thread.id, run_id=second.id).data
    assert answer.status == "completed" and answer.content[0].text.value == "four five"  # type: ignore[union-attr]
    (partial,) = client.beta.threads.messages.list(thread.id, run_id=first.id).data
    assert partial.status == "incomplete"


def test_without_the_opt_in_the_second_run_is_refused(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "Q0"}], metadata={"loom_concurrent_runs": "false"}
    )
    upstream.push(Turn.reply("slow", chunk_size=1, gate="only"))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held("only", timeout=30)
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert info.value.message.endswith(f"Thread {thread.id} already has an active run {run.id}.")
    with pytest.raises(openai.BadRequestError) as info:
        client.beta.threads.messages.create(thread.id, role="user", content="more")
    assert info.value.message.endswith(f"Can't add messages to {thread.id} while a run {run.id} is active.")
    upstream.release("only")
    assert wait_status(client, thread.id, run.id, {"completed"}).status == "completed"


@pytest.fixture(scope="module")
def everywhere(upstream: FakeUpstream) -> Iterator[LoomServer]:
    """A server (SQLite) on which every thread may hold several runs (`LOOM_CONCURRENT_RUNS`)."""
    env = server_env(upstream, LOOM_CONCURRENT_RUNS="true")
    with LoomServer(upstream_base_url=upstream.base_url, extra_env=env) as server:
        yield server


def test_the_server_wide_setting_opts_every_thread_in(everywhere: LoomServer, upstream: FakeUpstream) -> None:
    client = sdk_client(everywhere)
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Q0"}])
    upstream.push(Turn.reply("one", chunk_size=1, gate="x"), Turn.reply("two", chunk_size=1, gate="y"))
    first = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held("x", timeout=30)
    second = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held("y", timeout=30)
    client.beta.threads.messages.create(thread.id, role="user", content="meanwhile")
    upstream.release("x")
    upstream.release("y")
    for run in (first, second):
        assert wait_status(client, thread.id, run.id, {"completed", "failed"}).status == "completed"
