"""Messages through the official SDK in strict mode, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Iterator

import openai
import pytest

from tests.contract.conftest import checked_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.support.server import LoomServer


@pytest.fixture()
def thread_id(client: openai.OpenAI) -> str:
    return client.beta.threads.create().id


def test_string_content(client: openai.OpenAI, thread_id: str) -> None:
    msg = client.beta.threads.messages.create(thread_id, role="user", content="Hello there", metadata={"x": "y"})
    assert msg.id.startswith("msg_")
    assert msg.object == "thread.message"
    assert msg.thread_id == thread_id and msg.role == "user" and msg.status == "completed"
    assert msg.assistant_id is None and msg.run_id is None
    assert msg.attachments == [] and msg.metadata == {"x": "y"}
    assert len(msg.content) == 1 and msg.content[0].type == "text"
    assert msg.content[0].text.value == "Hello there" and msg.content[0].text.annotations == []
    assert client.beta.threads.messages.retrieve(msg.id, thread_id=thread_id).model_dump() == msg.model_dump()


def test_content_part_array(client: openai.OpenAI, thread_id: str) -> None:
    image = client.files.create(file=("pic.png", io.BytesIO(b"\x89PNG fake")), purpose="vision")
    msg = client.beta.threads.messages.create(
        thread_id,
        role="user",
        content=[
            {"type": "text", "text": "Look:"},
            {"type": "image_file", "image_file": {"file_id": image.id, "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ],
    )
    kinds = [c.type for c in msg.content]
    assert kinds == ["text", "image_file", "image_url"]
    assert msg.content[0].text.value == "Look:"  # type: ignore[union-attr]
    assert msg.content[1].image_file.file_id == image.id  # type: ignore[union-attr]
    assert msg.content[1].image_file.detail == "high"  # type: ignore[union-attr]
    assert msg.content[2].image_url.url == "https://example.com/cat.png"  # type: ignore[union-attr]
    assert msg.content[2].image_url.detail == "auto"  # type: ignore[union-attr]


def test_assistant_role_message(client: openai.OpenAI, thread_id: str) -> None:
    msg = client.beta.threads.messages.create(thread_id, role="assistant", content="I am a prior answer.")
    assert msg.role == "assistant" and msg.assistant_id is None


def test_attachments(client: openai.OpenAI, thread_id: str) -> None:
    f = client.files.create(file=("data.csv", io.BytesIO(b"a,b\n1,2\n")), purpose="assistants")
    msg = client.beta.threads.messages.create(
        thread_id,
        role="user",
        content="See attached",
        attachments=[{"file_id": f.id, "tools": [{"type": "code_interpreter"}, {"type": "file_search"}]}],
    )
    assert msg.attachments is not None and len(msg.attachments) == 1
    assert msg.attachments[0].file_id == f.id
    assert [t.type for t in msg.attachments[0].tools or []] == ["code_interpreter", "file_search"]


def test_unknown_file_in_attachment_or_image_is_404(client: openai.OpenAI, thread_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.create(
            thread_id, role="user", content="x", attachments=[{"file_id": "file-missing", "tools": []}]
        )
    assert err.value.body["message"] == "No file found with id 'file-missing'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.create(
            thread_id, role="user", content=[{"type": "image_file", "image_file": {"file_id": "file-gone"}}]
        )
    assert list(client.beta.threads.messages.list(thread_id)) == []


def test_empty_content_array_is_400(client: openai.OpenAI, thread_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(thread_id, role="user", content=[])
    assert err.value.param == "content"


def test_bad_role_and_part_type(client: openai.OpenAI, thread_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(thread_id, role="system", content="x")  # type: ignore[arg-type]
    assert err.value.param == "role" and err.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.create(
            thread_id,
            role="user",
            content=[{"type": "video", "video": {}}],  # type: ignore[list-item]
        )
    assert err.value.code == "invalid_value"


def test_run_id_filter(client: openai.OpenAI, thread_id: str) -> None:
    made = [client.beta.threads.messages.create(thread_id, role="user", content=str(i)).id for i in range(3)]
    assert [m.id for m in client.beta.threads.messages.list(thread_id, order="asc")] == made
    # Manually created messages belong to no run: a run_id filter finds none of them.
    assert list(client.beta.threads.messages.list(thread_id, run_id="run_abc")) == []


def test_list_orders_and_cursors(client: openai.OpenAI, thread_id: str) -> None:
    made = [client.beta.threads.messages.create(thread_id, role="user", content=str(i)).id for i in range(5)]
    page = client.beta.threads.messages.list(thread_id, limit=2)
    assert [m.id for m in page.data] == made[::-1][:2] and page.has_more
    assert page.first_id == made[4] and page.last_id == made[3]  # type: ignore[attr-defined]
    after = client.beta.threads.messages.list(thread_id, limit=2, order="asc", after=made[1])
    assert [m.id for m in after.data] == made[2:4]
    before = client.beta.threads.messages.list(thread_id, limit=2, order="asc", before=made[3])
    assert [m.id for m in before.data] == made[1:3]
    assert [m.id for m in client.beta.threads.messages.list(thread_id, limit=100, order="desc")] == made[::-1]


def test_modify_and_delete(client: openai.OpenAI, thread_id: str) -> None:
    msg = client.beta.threads.messages.create(thread_id, role="user", content="hi", metadata={"a": "1"})
    updated = client.beta.threads.messages.update(msg.id, thread_id=thread_id, metadata={"b": "2"})
    assert updated.metadata == {"b": "2"} and updated.content == msg.content
    deleted = client.beta.threads.messages.delete(msg.id, thread_id=thread_id)
    assert deleted.id == msg.id and deleted.deleted and deleted.object == "thread.message.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.retrieve(msg.id, thread_id=thread_id)
    assert err.value.body["message"] == f"No message found with id '{msg.id}'."  # type: ignore[index]
    assert list(client.beta.threads.messages.list(thread_id)) == []


def test_message_of_another_thread_is_404(client: openai.OpenAI, thread_id: str) -> None:
    msg = client.beta.threads.messages.create(thread_id, role="user", content="hi")
    other = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.retrieve(msg.id, thread_id=other.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.delete(msg.id, thread_id=other.id)


def test_unknown_thread_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.create("thread_nope", role="user", content="x")
    assert err.value.body["message"] == "No thread found with id 'thread_nope'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.list("thread_nope")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def run_server(upstream: FakeUpstream) -> Iterator[LoomServer]:
    """A server whose model is the scripted fake upstream, so that runs write messages of their own."""
    with LoomServer(upstream_base_url=upstream.base_url, extra_env={"LOOM_POLL_AFTER_MS": "20"}) as server:
        yield server


def test_run_id_filter_with_a_real_run(run_server: LoomServer, upstream: FakeUpstream) -> None:
    client = checked_client(run_server)
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hello?"}])
    upstream.push(Turn.reply("First answer."))
    first = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert first.status == "completed", first.last_error
    client.beta.threads.messages.create(thread.id, role="user", content="And again?")
    upstream.push(Turn.reply("Second answer."))
    second = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert second.status == "completed", second.last_error

    everything = list(client.beta.threads.messages.list(thread.id, order="asc"))
    assert [m.role for m in everything] == ["user", "assistant", "user", "assistant"]
    for run, text in ((first, "First answer."), (second, "Second answer.")):
        only = list(client.beta.threads.messages.list(thread.id, run_id=run.id))
        assert [m.content[0].text.value for m in only] == [text]  # type: ignore[union-attr]
        assert only[0].run_id == run.id and only[0].assistant_id == assistant.id
    assert list(client.beta.threads.messages.list(thread.id, run_id="run_unknown")) == []
