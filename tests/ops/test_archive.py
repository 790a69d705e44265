"""`loom export` / `loom import`: a project moved to a fresh server reads back identical through the SDK;
importing twice changes nothing; ids taken by another project are remapped; and an
`assistants-thread-export/v1` directory (the pre-sunset exporter's format, written here from its
definition) gives threads the SDK lists messages of and runs on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer
from tests.support.wait import wait_for

NOTES = b"The capital of Freedonia is Gnarlytown, a city of three hundred bridges.\n"
WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.fixture(scope="module")
def source(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    with LoomServer(database_url=database_url_for(backend), upstream_base_url=upstream.base_url) as server:
        yield server


def fresh_server(upstream: FakeUpstream) -> LoomServer:
    return LoomServer(upstream_base_url=upstream.base_url)


def snapshot(client: openai.OpenAI, assistant_id: str, thread_id: str, file_id: str, vs_id: str) -> dict[str, Any]:
    """Everything the SDK shows of the exported objects."""
    runs = client.beta.threads.runs.list(thread_id=thread_id, order="asc").data
    return {
        "assistant": client.beta.assistants.retrieve(assistant_id).model_dump(),
        "thread": client.beta.threads.retrieve(thread_id).model_dump(),
        "messages": [m.model_dump() for m in client.beta.threads.messages.list(thread_id=thread_id, order="asc")],
        "runs": [r.model_dump() for r in runs],
        "steps": [
            [s.model_dump() for s in client.beta.threads.runs.steps.list(run_id=r.id, thread_id=thread_id, order="asc")]
            for r in runs
        ],
        "file": client.files.retrieve(file_id).model_dump(),
        "content": client.files.content(file_id).read(),
        "vector_store": client.vector_stores.retrieve(vs_id).model_dump(),
        "vs_files": [f.model_dump() for f in client.vector_stores.files.list(vector_store_id=vs_id)],
    }


def test_export_then_import_into_a_fresh_server(source: LoomServer, upstream: FakeUpstream, tmp_path: Path) -> None:
    client = sdk_client(source)
    vs = client.vector_stores.create(name="kb")
    file = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("notes.txt", NOTES), poll_interval_ms=20
    )
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        name="Guide",
        tools=[WEATHER, {"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [vs.id]}},
        metadata={"team": "a"},
    )
    thread = client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "Weather in the capital?",
                "attachments": [{"file_id": file.id, "tools": [{"type": "file_search"}]}],
            }
        ]
    )
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Gnarlytown"})), Turn.reply("Sunny."))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "requires_action" and run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    run = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id,
        thread_id=thread.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}],
        poll_interval_ms=20,
    )
    assert run.status == "completed"
    before = snapshot(client, assistant.id, thread.id, file.id, vs.id)

    archive = tmp_path / "project.tar"
    result = source.cli("export", "--project", "default", "--out", str(archive))
    assert result.returncode == 0, result.stderr
    with fresh_server(upstream) as target:
        imported = target.cli("import", str(archive))
        assert imported.returncode == 0, imported.stderr
        assert "imported 1 threads" in imported.stdout and "imported 1 files" in imported.stdout
        fresh = sdk_client(target)
        # The search index is rebuilt by the importing server: the store's file is indexed again.
        wait_for(lambda: fresh.vector_stores.retrieve(vs.id).file_counts.completed == 1, timeout=60, what="re-indexing")
        after = snapshot(fresh, assistant.id, thread.id, file.id, vs.id)
        assert after == before
        # Importing again changes nothing.
        again = target.cli("import", str(archive))
        assert again.returncode == 0 and "imported" not in again.stdout.replace("import into", ""), again.stdout
        assert "already present (left as is): 1 threads" in again.stdout
        assert snapshot(fresh, assistant.id, thread.id, file.id, vs.id) == before
        # The imported thread runs on, and searches the re-indexed store.
        upstream.push(
            Turn.calls(ToolCallSpec("file_search", {"queries": ["Freedonia capital"]})), Turn.reply("Gnarlytown.")
        )
        fresh.beta.threads.messages.create(thread_id=thread.id, role="user", content="And its name?")
        run2 = fresh.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20
        )
        assert run2.status == "completed", run2.last_error
        tool_message = next(m for m in upstream.chat_requests[-1].body["messages"] if m["role"] == "tool")
        assert "Gnarlytown" in tool_message["content"]

    # Into another project of the same server: every id is taken (by `default`), so all are remapped.
    other = source.cli("import", str(archive), "--project", "other")
    assert other.returncode == 0, other.stderr
    assert f"remapped {thread.id} -> thread_" in other.stdout
    new_thread = other.stdout.split(f"remapped {thread.id} -> ")[1].split()[0]
    other_client = sdk_client(source, source.new_project_key("other"))
    messages = other_client.beta.threads.messages.list(thread_id=new_thread, order="asc").data
    assert [m.content for m in messages] == [openai.types.beta.threads.Message(**m).content for m in before["messages"]]
    assert all(m.thread_id == new_thread for m in messages)
    assert messages[0].attachments and messages[0].attachments[0].file_id != file.id
    # Once more: the same remapped ids are found, nothing is added.
    assert "already present (left as is): 1 threads" in source.cli("import", str(archive), "--project", "other").stdout


# ----------------------------------------------------------------------------- assistants-thread-export/v1


def _text(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"value": value, "annotations": []}}]


def thread_export_fixture(root: Path) -> tuple[str, str]:
    """A directory as the exporter writes it: assistants.json, threads/<id>.json (raw OpenAI objects)."""
    aid, tid, rid = "asst_Xq9Vb2LmNc4Rt7Wy1Zd3Ke8P", "thread_Hj5Fg3Sd2Aq1Wz7Xc9Vb4Nm6", "run_Pl0Ok9Ij8Uh7Yg6Tf5Rd4Es3"
    t0 = 1_717_000_000
    assistant = {
        "id": aid,
        "object": "assistant",
        "created_at": t0,
        "name": "Helper",
        "description": None,
        "model": "gpt-4o",
        "instructions": "Be brief.",
        "tools": [],
        "tool_resources": {},
        "metadata": {},
        "top_p": 1.0,
        "temperature": 1.0,
        "response_format": "auto",
    }
    thread = {"id": tid, "object": "thread", "created_at": t0 + 10, "metadata": {"user": "u1"}, "tool_resources": {}}

    def message(mid: str, at: int, role: str, text: str, run_id: str | None) -> dict[str, Any]:
        return {
            "id": mid,
            "object": "thread.message",
            "created_at": at,
            "assistant_id": aid if role == "assistant" else None,
            "thread_id": tid,
            "run_id": run_id,
            "status": "completed",
            "incomplete_details": None,
            "completed_at": at if role == "assistant" else None,
            "incomplete_at": None,
            "role": role,
            "content": _text(text),
            "attachments": [],
            "metadata": {},
        }

    messages = [
        message("msg_Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8", t0 + 11, "user", "My favourite colour is teal.", None),
        message("msg_Ii9Jj8Kk7Ll6Mm5Nn4Oo3Pp2", t0 + 13, "assistant", "Noted: teal.", rid),
    ]
    usage = {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
    step = {
        "id": "step_Qq1Rr2Ss3Tt4Uu5Vv6Ww7Xx8",
        "object": "thread.run.step",
        "created_at": t0 + 13,
        "run_id": rid,
        "assistant_id": aid,
        "thread_id": tid,
        "type": "message_creation",
        "status": "completed",
        "cancelled_at": None,
        "completed_at": t0 + 13,
        "expired_at": None,
        "failed_at": None,
        "last_error": None,
        "step_details": {"type": "message_creation", "message_creation": {"message_id": messages[1]["id"]}},
        "usage": usage,
        "metadata": {},
    }
    run = {
        "id": rid,
        "object": "thread.run",
        "created_at": t0 + 12,
        "assistant_id": aid,
        "thread_id": tid,
        "status": "completed",
        "started_at": t0 + 12,
        "expires_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": t0 + 13,
        "required_action": None,
        "last_error": None,
        "model": "gpt-4o",
        "instructions": "Be brief.",
        "tools": [],
        "metadata": {},
        "incomplete_details": None,
        "usage": usage,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_prompt_tokens": None,
        "max_completion_tokens": None,
        "truncation_strategy": {"type": "auto", "last_messages": None},
        "response_format": "auto",
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning_effort": None,
        "steps": [step],
    }
    record = {
        "export_schema": "assistants-thread-export/v1",
        "thread_id": tid,
        "exported_at": "2026-08-20T10:00:00+00:00",
        "thread": thread,
        "messages": messages,
        "runs": [run],
        "files": {},
        "errors": [],
    }
    (root / "threads").mkdir(parents=True)
    (root / "assistants.json").write_text(json.dumps([assistant], indent=2))
    (root / "threads" / f"{tid}.json").write_text(json.dumps(record, indent=2))
    (root / "manifest.json").write_text(json.dumps({"export_schema": "assistants-export-manifest/v1"}))
    return aid, tid


def test_import_an_assistants_thread_export(source: LoomServer, upstream: FakeUpstream, tmp_path: Path) -> None:
    aid, tid = thread_export_fixture(tmp_path / "export")
    with fresh_server(upstream) as target:
        result = target.cli("import", str(tmp_path / "export"))
        assert result.returncode == 0, result.stderr
        assert "imported 1 threads" in result.stdout and "imported 2 messages" in result.stdout
        client = sdk_client(target)
        messages = client.beta.threads.messages.list(thread_id=tid, order="asc").data
        assert [m.content[0].text.value for m in messages] == ["My favourite colour is teal.", "Noted: teal."]  # type: ignore[union-attr]
        assert client.beta.threads.retrieve(tid).metadata == {"user": "u1"}
        (old_run,) = client.beta.threads.runs.list(thread_id=tid).data
        assert old_run.status == "completed" and old_run.usage is not None and old_run.usage.total_tokens == 24
        steps = client.beta.threads.runs.steps.list(run_id=old_run.id, thread_id=tid).data
        assert [s.type for s in steps] == ["message_creation"]
        # The thread goes on in Loom: a new run sees the imported history.
        upstream.push(Turn.reply("Teal, as you said."))
        client.beta.threads.messages.create(thread_id=tid, role="user", content="What is my favourite colour?")
        run = client.beta.threads.runs.create_and_poll(thread_id=tid, assistant_id=aid, poll_interval_ms=20)
        assert run.status == "completed", run.last_error
        sent = upstream.chat_requests[-1].body["messages"]
        assert {"role": "user", "content": "My favourite colour is teal."} in sent
        assert {"role": "assistant", "content": "Noted: teal."} in sent
        assert sent[0]["content"].startswith("Be brief.")
        # Idempotent.
        again = target.cli("import", str(tmp_path / "export"))
        assert "already present (left as is): 1 threads" in again.stdout
        assert len(client.beta.threads.messages.list(thread_id=tid).data) == 4
