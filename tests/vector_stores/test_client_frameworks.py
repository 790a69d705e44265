"""file_search the way client frameworks drive it (raw SDK calls, shaped as they send them).

- LangChain's Assistants integration sends file attachments only inside `create_and_run`'s thread
  (`thread={"messages": [{..., "attachments": [...]}]}`), sometimes with top-level `tool_resources`.
- Agency Swarm re-sends `tool_resources: {"file_search": {}}` on every agent reload.
- Clients write back the `tool_resources` they read, also after a store was deleted.
"""

from __future__ import annotations

from typing import Any, Final

import openai
import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.wait import wait_for
from tests.vector_stores.conftest import INGEST_TIMEOUT_S

NOTES = b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges over the Zarn river.\n"
RECIPES = b"Pancakes need flour, eggs and milk. Waffles need a hot iron.\n"
INCLUDE: Final = "step_details.tool_calls[*].file_search.results[*].content"
QUESTION = "What is the capital of Freedonia?"


def _upload(client: openai.OpenAI, name: str, data: bytes) -> str:
    return client.files.create(file=(name, data), purpose="assistants").id


def _attached(file_id: str) -> Any:
    """A `thread` for create_and_run as LangChain builds it: one user message with a file_search attachment."""
    return {
        "messages": [
            {
                "role": "user",
                "content": QUESTION,
                "attachments": [{"file_id": file_id, "tools": [{"type": "file_search"}]}],
            }
        ]
    }


def _store_ids(owner: Any) -> list[str]:
    fs = owner.tool_resources.file_search if owner.tool_resources is not None else None
    return list(fs.vector_store_ids or []) if fs is not None else []


def _store_files(client: openai.OpenAI, store_id: str) -> set[str]:
    return {f.id for f in client.vector_stores.files.list(vector_store_id=store_id)}


def _search_results(client: openai.OpenAI, thread_id: str, run_id: str) -> list[Any]:
    steps = client.beta.threads.runs.steps.list(thread_id=thread_id, run_id=run_id, order="asc").data
    call: Any = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert call.type == "file_search"
    return list(call.file_search.results or [])


def _tool_output(upstream: FakeUpstream) -> str:
    second = upstream.chat_requests[-1].body["messages"]
    return str(next(m for m in second if m["role"] == "tool")["content"])


def _search_assistant(client: openai.OpenAI) -> str:
    return client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search", "file_search": {"ranking_options": {"score_threshold": 0.0}}}],
    ).id


def _run_and_search(client: openai.OpenAI, upstream: FakeUpstream, **create: Any) -> Any:
    upstream.push(Turn.calls(ToolCallSpec("file_search", {"queries": ["capital of Freedonia"]})), Turn.reply("ok"))
    run = client.beta.threads.create_and_run(**create)
    run = client.beta.threads.runs.poll(run.id, thread_id=run.thread_id, poll_interval_ms=20)
    assert run.status == "completed", run.last_error
    return run


def test_create_and_run_searches_the_attachment(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    notes = _upload(client, "notes.txt", NOTES)
    run = _run_and_search(client, upstream, assistant_id=_search_assistant(client), thread=_attached(notes))
    assert "Gnarlytown" in _tool_output(upstream)
    assert notes in {r.file_id for r in _search_results(client, run.thread_id, run.id)}
    [store] = _store_ids(client.beta.threads.retrieve(run.thread_id))
    assert _store_files(client, store) == {notes}


def test_create_and_run_keeps_the_attachment_store_beside_top_level_resources(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    notes = _upload(client, "notes.txt", NOTES)
    data = _upload(client, "data.csv", b"a,b\n1,2\n")
    run = _run_and_search(
        client,
        upstream,
        assistant_id=_search_assistant(client),
        thread=_attached(notes),
        tool_resources={"code_interpreter": {"file_ids": [data]}},
    )
    assert notes in {r.file_id for r in _search_results(client, run.thread_id, run.id)}
    thread = client.beta.threads.retrieve(run.thread_id)
    assert thread.tool_resources is not None and thread.tool_resources.code_interpreter is not None
    assert thread.tool_resources.code_interpreter.file_ids == [data]
    [store] = _store_ids(thread)
    assert _store_files(client, store) == {notes}


def test_create_and_run_attachment_joins_the_top_level_store(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    """A thread has at most one store; as OpenAI did for a thread with a store, attachments join it."""
    recipes = _upload(client, "recipes.txt", RECIPES)
    given = client.vector_stores.create(name="given", file_ids=[recipes]).id
    notes = _upload(client, "notes.txt", NOTES)
    run = _run_and_search(
        client,
        upstream,
        assistant_id=_search_assistant(client),
        thread=_attached(notes),
        tool_resources={"file_search": {"vector_store_ids": [given]}},
    )
    assert "Gnarlytown" in _tool_output(upstream)
    assert notes in {r.file_id for r in _search_results(client, run.thread_id, run.id)}
    assert _store_ids(client.beta.threads.retrieve(run.thread_id)) == [given]
    assert _store_files(client, given) == {recipes, notes}


def test_thread_created_with_attachments_shows_its_store(client: openai.OpenAI) -> None:
    notes = _upload(client, "notes.txt", NOTES)
    created = client.beta.threads.create(**_attached(notes))
    [store] = _store_ids(created)
    assert _store_ids(client.beta.threads.retrieve(created.id)) == [store]

    # The streamed createThreadAndRun announces the thread the same way.
    assistant = client.beta.assistants.create(model="gpt-4o")
    with client.beta.threads.create_and_run(assistant_id=assistant.id, thread=_attached(notes), stream=True) as events:
        first = next(iter(events))
        assert first.event == "thread.created"
        [streamed_store] = _store_ids(first.data)
        thread_id = first.data.id
    assert _store_ids(client.beta.threads.retrieve(thread_id)) == [streamed_store]
    wait_for(
        lambda: (
            client.beta.threads.runs.list(thread_id=thread_id).data[0].status
            not in ("queued", "in_progress", "cancelling")
        ),
        INGEST_TIMEOUT_S,
        "the streamed run to end",
    )


@pytest.mark.parametrize("include", [[], [INCLUDE]], ids=["no-include", "include-content"])
def test_streamed_step_matches_its_get(client: openai.OpenAI, upstream: FakeUpstream, include: Any) -> None:
    vs = client.vector_stores.create(name="kb")
    client.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=("notes.txt", NOTES), poll_interval_ms=20)
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search", "file_search": {"ranking_options": {"score_threshold": 0.0}}}],
        tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    upstream.push(Turn.calls(ToolCallSpec("file_search", {"queries": ["Gnarlytown"]})), Turn.reply("Gnarlytown."))
    streamed: list[Any] = []
    with client.beta.threads.runs.create(
        thread_id=thread.id, assistant_id=assistant.id, stream=True, include=include
    ) as events:
        for event in events:
            if event.event.startswith("thread.run.step.") and event.event != "thread.run.step.delta":
                streamed.append(event.data)
    tool_steps = [s for s in streamed if s.type == "tool_calls"]
    assert [s.status for s in tool_steps] == ["in_progress", "in_progress", "completed"]
    done = tool_steps[-1]
    got = client.beta.threads.runs.steps.retrieve(done.id, thread_id=thread.id, run_id=done.run_id, include=include)
    assert done.model_dump() == got.model_dump()
    [result] = done.step_details.tool_calls[0].file_search.results
    if include:
        assert result.content is not None and "Gnarlytown" in (result.content[0].text or "")
    else:
        assert result.content is None
        # Not merely absent from the SDK's model: not on the wire.
        assert (
            "content"
            not in done.model_dump(exclude_unset=True)["step_details"]["tool_calls"][0]["file_search"]["results"][0]
        )


def test_modify_with_empty_file_search_keeps_the_stores(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="kept").id
    assistant = client.beta.assistants.create(
        model="gpt-4o", tool_resources={"file_search": {"vector_store_ids": [vs]}}
    )
    # Agency Swarm's reload.
    reloaded = client.beta.assistants.update(assistant.id, tool_resources={"file_search": {}}, instructions="v2")
    assert _store_ids(reloaded) == [vs]
    assert _store_ids(client.beta.assistants.retrieve(assistant.id)) == [vs]

    thread = client.beta.threads.create(tool_resources={"file_search": {"vector_store_ids": [vs]}})
    updated = client.beta.threads.update(thread.id, tool_resources={"file_search": {}})
    assert _store_ids(updated) == [vs]
    assert _store_ids(client.beta.threads.retrieve(thread.id)) == [vs]

    # An explicit empty list still detaches.
    cleared = client.beta.assistants.update(assistant.id, tool_resources={"file_search": {"vector_store_ids": []}})
    assert _store_ids(cleared) == []
    assert (
        _store_ids(client.beta.threads.update(thread.id, tool_resources={"file_search": {"vector_store_ids": []}}))
        == []
    )


def test_deleting_a_store_detaches_it(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    doomed = client.vector_stores.create(name="doomed").id
    kept = client.vector_stores.create(name="kept").id
    data = _upload(client, "data.csv", b"a,b\n1,2\n")
    resources: Any = {"file_search": {"vector_store_ids": [doomed]}, "code_interpreter": {"file_ids": [data]}}
    assistant = client.beta.assistants.create(model="gpt-4o", tool_resources=resources)
    thread = client.beta.threads.create(tool_resources=resources)
    bystander = client.beta.assistants.create(
        model="gpt-4o", tool_resources={"file_search": {"vector_store_ids": [kept]}}
    )
    theirs = other_client.vector_stores.create(name="theirs").id
    other_assistant = other_client.beta.assistants.create(
        model="gpt-4o", tool_resources={"file_search": {"vector_store_ids": [theirs]}}
    )

    assert client.vector_stores.delete(doomed).deleted
    read_assistant = client.beta.assistants.retrieve(assistant.id)
    read_thread = client.beta.threads.retrieve(thread.id)
    for owner in (read_assistant, read_thread):
        assert owner.tool_resources is not None and owner.tool_resources.file_search is not None
        assert owner.tool_resources.file_search.vector_store_ids == []
        assert owner.tool_resources.code_interpreter is not None
        assert owner.tool_resources.code_interpreter.file_ids == [data]
    assert _store_ids(client.beta.assistants.retrieve(bystander.id)) == [kept]
    assert _store_ids(other_client.beta.assistants.retrieve(other_assistant.id)) == [theirs]

    # Writing back what was read is accepted.
    assert read_assistant.tool_resources is not None and read_thread.tool_resources is not None
    written: Any = read_assistant.tool_resources.model_dump(exclude_none=True)
    assert _store_ids(client.beta.assistants.update(assistant.id, tool_resources=written)) == []
    written = read_thread.tool_resources.model_dump(exclude_none=True)
    assert _store_ids(client.beta.threads.update(thread.id, tool_resources=written)) == []
