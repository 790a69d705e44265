"""File-search markers are numbered per run, and the numbering is kept in the stored run: a run that
pauses for tool outputs and resumes in another process (here: after a kill -9 and restart) goes on
from where it was, so a new marker never repeats an old one (which would cite the wrong passage)."""

from __future__ import annotations

from typing import Any

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, server_env
from tests.support.postgres import new_database
from tests.support.server import LoomServer

NOTES = b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges over the Zarn river.\n"


def _tool_messages(upstream: FakeUpstream) -> list[str]:
    last = upstream.chat_requests[-1].body["messages"]
    return [str(m["content"]) for m in last if m["role"] == "tool" and "【" in str(m["content"])]


def test_markers_go_on_numbering_after_a_restart(backend: str, upstream: FakeUpstream) -> None:
    url = new_database() if backend == "postgres" else ""
    first = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=server_env(upstream)).start()
    try:
        client = sdk_client(first)
        vs = client.vector_stores.create(name="kb")
        f = client.vector_stores.files.upload_and_poll(
            vector_store_id=vs.id, file=("notes.txt", NOTES), poll_interval_ms=20
        )
        assert f.status == "completed"
        assistant = client.beta.assistants.create(
            model="gpt-4o",
            tools=[{"type": "file_search"}, FUNCTION_TOOL],
            tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
        )
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "Freedonia, then weather"}])
        upstream.push(
            Turn.calls(ToolCallSpec("file_search", {"queries": ["capital of Freedonia"]})),
            Turn.calls(ToolCallSpec("get_weather", {"city": "Gnarlytown"})),
        )
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
        )
        assert run.status == "requires_action", run.last_error
        [before] = _tool_messages(upstream)
        assert "【0:0†notes.txt】" in before
    finally:
        first.kill()

    second = LoomServer(
        database_url=first.database_url,
        upstream_base_url=upstream.base_url,
        data_dir=first.data_dir,
        extra_env={k: v for k, v in first.env.items() if k.startswith("LOOM_")},
    ).start()
    try:
        client = sdk_client(second)
        call: Any = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
        upstream.push(
            Turn.calls(ToolCallSpec("file_search", {"queries": ["bridges of Gnarlytown"]})),
            Turn.reply("Gnarlytown 【0:0†notes.txt】 has bridges 【1:0†notes.txt】."),
        )
        done = client.beta.threads.runs.submit_tool_outputs_and_poll(
            run_id=run.id,
            thread_id=thread.id,
            tool_outputs=[{"tool_call_id": call.id, "output": "warm"}],
            poll_interval_ms=20,
        )
        assert done.status == "completed", done.last_error
        first_search, second_search = _tool_messages(upstream)
        assert "【0:0†notes.txt】" in first_search
        assert "【1:0†notes.txt】" in second_search and "【0:" not in second_search
        message = client.beta.threads.messages.list(thread_id=thread.id, order="desc").data[0]
        text = message.content[0].text  # type: ignore[union-attr]
        assert sorted(a.text for a in text.annotations) == ["【0:0†notes.txt】", "【1:0†notes.txt】"]
        assert {a.file_citation.file_id for a in text.annotations} == {f.id}  # type: ignore[union-attr]
    finally:
        second.stop()
