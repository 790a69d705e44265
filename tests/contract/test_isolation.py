"""Project isolation: with another project's key, every endpoint answers 404 or an empty list."""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import openai
import pytest

from tests.contract.conftest import checked_client
from tests.support.server import LoomServer


@dataclass
class Mine:
    assistant: str
    thread: str
    message: str
    file: str
    upload: str


@pytest.fixture()
def mine(client: openai.OpenAI) -> Mine:
    f = client.files.create(file=("secret.txt", io.BytesIO(b"secret")), purpose="assistants")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "private"}])
    upload = client.uploads.create(bytes=3, filename="u.txt", mime_type="text/plain", purpose="assistants")
    return Mine(
        assistant=client.beta.assistants.create(model="gpt-4o").id,
        thread=thread.id,
        message=next(iter(client.beta.threads.messages.list(thread.id))).id,
        file=f.id,
        upload=upload.id,
    )


def test_assistants(other_client: openai.OpenAI, client: openai.OpenAI, mine: Mine) -> None:
    for call in (
        lambda: other_client.beta.assistants.retrieve(mine.assistant),
        lambda: other_client.beta.assistants.update(mine.assistant, name="stolen"),
        lambda: other_client.beta.assistants.delete(mine.assistant),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == f"No assistant found with id '{mine.assistant}'."  # type: ignore[index]
    assert mine.assistant not in [a.id for a in other_client.beta.assistants.list(limit=100)]
    with pytest.raises(openai.BadRequestError):
        other_client.beta.assistants.list(after=mine.assistant)
    assert client.beta.assistants.retrieve(mine.assistant).name is None


def test_threads(other_client: openai.OpenAI, client: openai.OpenAI, mine: Mine) -> None:
    for call in (
        lambda: other_client.beta.threads.retrieve(mine.thread),
        lambda: other_client.beta.threads.update(mine.thread, metadata={"x": "y"}),
        lambda: other_client.beta.threads.delete(mine.thread),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == f"No thread found with id '{mine.thread}'."  # type: ignore[index]
    assert client.beta.threads.retrieve(mine.thread).metadata == {}


def test_messages(other_client: openai.OpenAI, client: openai.OpenAI, mine: Mine) -> None:
    for call in (
        lambda: other_client.beta.threads.messages.list(mine.thread),
        lambda: other_client.beta.threads.messages.create(mine.thread, role="user", content="intrusion"),
        lambda: other_client.beta.threads.messages.retrieve(mine.message, thread_id=mine.thread),
        lambda: other_client.beta.threads.messages.update(mine.message, thread_id=mine.thread, metadata={}),
        lambda: other_client.beta.threads.messages.delete(mine.message, thread_id=mine.thread),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    # Even inside a thread of its own, the other project cannot reach my message.
    own = other_client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        other_client.beta.threads.messages.retrieve(mine.message, thread_id=own.id)
    assert [m.id for m in client.beta.threads.messages.list(mine.thread)] == [mine.message]


def test_files(other_client: openai.OpenAI, client: openai.OpenAI, mine: Mine) -> None:
    for call in (
        lambda: other_client.files.retrieve(mine.file),
        lambda: other_client.files.content(mine.file),
        lambda: other_client.files.delete(mine.file),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == f"No file found with id '{mine.file}'."  # type: ignore[index]
    assert mine.file not in [f.id for f in other_client.files.list()]
    assert mine.file not in [f.id for f in other_client.files.list(purpose="assistants")]
    assert client.files.content(mine.file).content == b"secret"


def test_my_files_cannot_be_referenced(other_client: openai.OpenAI, mine: Mine) -> None:
    own = other_client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        other_client.beta.threads.messages.create(
            own.id, role="user", content="x", attachments=[{"file_id": mine.file, "tools": []}]
        )
    with pytest.raises(openai.NotFoundError):
        other_client.beta.threads.messages.create(
            own.id, role="user", content=[{"type": "image_file", "image_file": {"file_id": mine.file}}]
        )
    with pytest.raises(openai.NotFoundError):
        other_client.beta.threads.create(tool_resources={"code_interpreter": {"file_ids": [mine.file]}})
    with pytest.raises(openai.NotFoundError):
        other_client.beta.assistants.create(
            model="gpt-4o", tool_resources={"code_interpreter": {"file_ids": [mine.file]}}
        )


def test_uploads(other_client: openai.OpenAI, client: openai.OpenAI, mine: Mine) -> None:
    for call in (
        lambda: other_client.uploads.parts.create(mine.upload, data=io.BytesIO(b"abc")),
        lambda: other_client.uploads.complete(mine.upload, part_ids=[]),
        lambda: other_client.uploads.cancel(mine.upload),
    ):
        with pytest.raises(openai.NotFoundError) as err:
            call()
        assert err.value.body["message"] == f"No upload found with id '{mine.upload}'."  # type: ignore[index]
    part = client.uploads.parts.create(mine.upload, data=io.BytesIO(b"abc"))
    with pytest.raises(openai.NotFoundError):
        other_client.uploads.complete(mine.upload, part_ids=[part.id])
    done = client.uploads.complete(mine.upload, part_ids=[part.id])
    assert done.file is not None
    with pytest.raises(openai.NotFoundError):
        other_client.files.retrieve(done.file.id)


def test_a_new_project_sees_empty_lists(loom_server: LoomServer, mine: Mine) -> None:
    created = loom_server.cli("keys", "create", "--project", f"fresh-{secrets.token_hex(4)}")
    assert created.returncode == 0, created.stderr
    fresh = checked_client(loom_server, created.stdout.strip())
    assert fresh.beta.assistants.list(limit=100).data == []
    assert fresh.files.list().data == []
    assert fresh.files.list(purpose="assistants").data == []
    with pytest.raises(openai.NotFoundError):
        fresh.beta.threads.messages.list(mine.thread)
