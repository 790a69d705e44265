"""Threads through the official SDK in strict mode, on SQLite and PostgreSQL."""

from __future__ import annotations

import io

import openai
import pytest


def test_create_empty_thread(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    assert thread.id.startswith("thread_")
    assert thread.object == "thread"
    assert thread.metadata == {}
    assert isinstance(thread.created_at, int)
    assert client.beta.threads.retrieve(thread.id).model_dump() == thread.model_dump()


def test_create_with_messages_metadata_and_resources(client: openai.OpenAI) -> None:
    f = client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="assistants")
    thread = client.beta.threads.create(
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "second"}]},
        ],
        metadata={"k": "v"},
        tool_resources={"code_interpreter": {"file_ids": [f.id]}},
    )
    assert thread.metadata == {"k": "v"}
    assert thread.tool_resources is not None and thread.tool_resources.code_interpreter is not None
    assert thread.tool_resources.code_interpreter.file_ids == [f.id]
    msgs = list(client.beta.threads.messages.list(thread.id, order="asc"))
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert [m.content[0].text.value for m in msgs] == ["first", "second"]  # type: ignore[union-attr]
    assert all(m.thread_id == thread.id and m.run_id is None and m.assistant_id is None for m in msgs)


def test_create_with_unknown_file_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.create(tool_resources={"code_interpreter": {"file_ids": ["file-nope"]}})
    assert err.value.body["message"] == "No file found with id 'file-nope'."  # type: ignore[index]


def test_modify_replaces_metadata_and_keeps_the_rest(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(metadata={"a": "1", "b": "2"})
    updated = client.beta.threads.update(thread.id, metadata={"c": "3"})
    assert updated.metadata == {"c": "3"}
    assert updated.created_at == thread.created_at
    assert client.beta.threads.retrieve(thread.id).metadata == {"c": "3"}
    # An empty modify changes nothing.
    same = client.beta.threads.update(thread.id)
    assert same.metadata == {"c": "3"}


def test_modify_tool_resources(client: openai.OpenAI) -> None:
    f1 = client.files.create(file=("a.txt", io.BytesIO(b"a")), purpose="assistants")
    f2 = client.files.create(file=("b.txt", io.BytesIO(b"b")), purpose="assistants")
    thread = client.beta.threads.create(tool_resources={"code_interpreter": {"file_ids": [f1.id]}})
    updated = client.beta.threads.update(thread.id, tool_resources={"code_interpreter": {"file_ids": [f2.id]}})
    assert updated.tool_resources is not None and updated.tool_resources.code_interpreter is not None
    assert updated.tool_resources.code_interpreter.file_ids == [f2.id]


def test_delete_removes_thread_and_its_messages(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    msg_id = next(iter(client.beta.threads.messages.list(thread.id))).id
    deleted = client.beta.threads.delete(thread.id)
    assert deleted.id == thread.id and deleted.deleted and deleted.object == "thread.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.retrieve(thread.id)
    assert err.value.body["message"] == f"No thread found with id '{thread.id}'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve(msg_id, thread_id=thread.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.delete(thread.id)
