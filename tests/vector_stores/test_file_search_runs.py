"""file_search in runs: the scripted model searches, the step shows results, the answer cites files."""

from __future__ import annotations

from typing import Any, Final, cast

import openai
from openai import AssistantEventHandler

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.wait import wait_for
from tests.vector_stores.conftest import INGEST_TIMEOUT_S

NOTES = b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges over the Zarn river.\n"
INCLUDE: Final = "step_details.tool_calls[*].file_search.results[*].content"


def _store_with_notes(client: openai.OpenAI) -> tuple[str, str]:
    vs = client.vector_stores.create(name="kb")
    f = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("notes.txt", NOTES), poll_interval_ms=20
    )
    assert f.status == "completed"
    return vs.id, f.id


def fs_results(step: Any) -> list[Any]:
    """The file_search results of a step's first tool call (SDK unions make this untyped)."""
    return list(step.step_details.tool_calls[0].file_search.results or [])


def _tool_message(upstream: FakeUpstream) -> dict[str, Any]:
    second = upstream.chat_requests[-1].body["messages"]
    return next(m for m in second if m["role"] == "tool")


def test_run_searches_and_cites(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    vs_id, file_id = _store_with_notes(client)
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search", "file_search": {"ranking_options": {"score_threshold": 0.0}}}],
        tool_resources={"file_search": {"vector_store_ids": [vs_id]}},
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "What is the capital of Freedonia?"}])
    marker = "【0:0†notes.txt】"
    upstream.push(
        Turn.calls(ToolCallSpec("file_search", {"queries": ["capital of Freedonia", "Gnarlytown"]})),
        Turn.reply(f"The capital is Gnarlytown {marker}.", chunk_size=4),
    )
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "completed", run.last_error

    # The model saw a file_search function and got passages headed by markers.
    first = upstream.chat_requests[-2].body
    assert any(t["function"]["name"] == "file_search" for t in first["tools"])
    tool_msg = _tool_message(upstream)
    assert marker in tool_msg["content"] and "Gnarlytown" in tool_msg["content"]

    message = client.beta.threads.messages.list(thread_id=thread.id, order="desc").data[0]
    text = message.content[0].text  # type: ignore[union-attr]
    assert text.value == f"The capital is Gnarlytown {marker}."
    [annotation] = text.annotations
    assert annotation.type == "file_citation" and annotation.text == marker
    assert annotation.file_citation.file_id == file_id  # type: ignore[union-attr]
    assert text.value[annotation.start_index : annotation.end_index] == marker

    steps = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run.id, order="asc").data
    call: Any = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert call.type == "file_search"
    assert call.file_search.ranking_options.ranker == "default_2024_08_21"
    assert call.file_search.ranking_options.score_threshold == 0.0
    [result] = call.file_search.results
    assert result.file_id == file_id and result.file_name == "notes.txt" and 0 < result.score <= 1
    assert result.content is None  # only with include[]

    with_content = client.beta.threads.runs.steps.retrieve(
        step_id=steps[0].id, thread_id=thread.id, run_id=run.id, include=[INCLUDE]
    )
    [full] = fs_results(with_content)
    assert full.content is not None and "Gnarlytown" in (full.content[0].text or "")


def test_streamed_run_fires_callbacks_and_annotates(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    vs_id, file_id = _store_with_notes(client)
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "file_search"}])
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "How many bridges?"}],
        tool_resources={"file_search": {"vector_store_ids": [vs_id]}},  # the thread's store is searched too
    )
    marker = "【0:0†notes.txt】"
    upstream.push(
        Turn.calls(ToolCallSpec("file_search", {"queries": ["bridges"]}), arguments_chunk_size=5),
        Turn.reply(f"Three hundred {marker}", chunk_size=3),
    )

    class Handler(AssistantEventHandler):
        def __init__(self) -> None:
            super().__init__()
            self.created: list[str] = []
            self.done: list[Any] = []

        def on_tool_call_created(self, tool_call: Any) -> None:
            self.created.append(tool_call.type)

        def on_tool_call_done(self, tool_call: Any) -> None:
            self.done.append(tool_call)

    handler = Handler()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler, include=[INCLUDE]
    ) as stream:
        stream.until_done()
    assert handler.get_final_run().status == "completed"
    assert handler.created == ["file_search"]
    assert handler.done and handler.done[0].type == "file_search"
    [message] = handler.get_final_messages()
    text = message.content[0].text  # type: ignore[union-attr]
    assert [a.type for a in text.annotations] == ["file_citation"]
    assert text.annotations[0].file_citation.file_id == file_id  # type: ignore[union-attr]
    # The SDK builds step snapshots from deltas only (OpenAI's delta is `file_search: {}`): read the step.
    run_id = handler.get_final_run().id
    steps = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run_id, include=[INCLUDE]).data
    tool_step = next(s for s in steps if s.type == "tool_calls")
    results = fs_results(tool_step)
    assert results is not None and results[0].file_id == file_id and results[0].content


def test_max_num_results_defaults_and_override(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    vs = client.vector_stores.create(name="many")
    docs = [(f"doc{i}.txt", f"Report {i} about lighthouse keepers and lighthouse lamps.".encode()) for i in range(8)]
    batch = client.vector_stores.file_batches.upload_and_poll(vector_store_id=vs.id, files=docs, poll_interval_ms=20)
    assert batch.file_counts.completed == 8

    def results_for(model: str, tool: Any) -> int:
        assistant = client.beta.assistants.create(
            model=model, tools=[tool], tool_resources={"file_search": {"vector_store_ids": [vs.id]}}
        )
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "lighthouse?"}])
        upstream.push(Turn.calls(ToolCallSpec("file_search", {"queries": ["lighthouse"]})), Turn.reply("ok"))
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
        )
        assert run.status == "completed", run.last_error
        step = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run.id, order="asc").data[0]
        return len(fs_results(step))

    assert results_for("gpt-4o", {"type": "file_search"}) == 8
    assert results_for("gpt-3.5-turbo", {"type": "file_search"}) == 5
    assert results_for("gpt-4o", {"type": "file_search", "file_search": {"max_num_results": 2}}) == 2


def test_attachments_and_helper_create_stores(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    file_id = client.files.create(file=("notes.txt", NOTES), purpose="assistants").id
    # tool_resources.file_search.vector_stores: the helper that creates a store.
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_stores": [{"file_ids": [file_id], "metadata": {"k": "v"}}]}},
    )
    [helper_store] = cast(Any, assistant.tool_resources).file_search.vector_store_ids
    store = wait_for(
        lambda: (s := client.vector_stores.retrieve(helper_store)).file_counts.completed == 1 and s,
        INGEST_TIMEOUT_S,
        "helper store ingestion",
    )
    assert store.metadata == {"k": "v"}

    # A message attachment with file_search lands in the thread's own store (created on demand).
    other = client.files.create(file=("recipes.txt", b"Pancakes need flour and eggs."), purpose="assistants").id
    thread = client.beta.threads.create()
    client.beta.threads.messages.create(
        thread_id=thread.id,
        role="user",
        content="Use the recipe",
        attachments=[{"file_id": other, "tools": [{"type": "file_search"}]}],
    )
    thread = client.beta.threads.retrieve(thread.id)
    [thread_store] = cast(Any, thread.tool_resources).file_search.vector_store_ids
    assert thread_store != helper_store
    ts = client.vector_stores.retrieve(thread_store)
    assert ts.expires_after is not None and ts.expires_after.days == 7
    upstream.push(Turn.calls(ToolCallSpec("file_search", {"queries": ["pancakes flour"]})), Turn.reply("Flour."))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "completed", run.last_error
    step = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run.id, order="asc").data[0]
    found = {r.file_id for r in fs_results(step)}
    assert other in found  # the run waited for the thread store's ingestion and searched both stores
