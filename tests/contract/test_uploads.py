"""Uploads (large files in parts) through the official SDK in strict mode, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.contract.conftest import checked_client
from tests.support.server import LoomServer
from tests.support.wait import wait_for


def _upload(client: openai.OpenAI, total: int, name: str = "big.txt") -> str:
    upload = client.uploads.create(bytes=total, filename=name, mime_type="text/plain", purpose="assistants")
    assert upload.id.startswith("upload_")
    assert upload.status == "pending" and upload.bytes == total and upload.filename == name
    assert upload.expires_at == upload.created_at + 3600 and upload.file is None
    return upload.id


def test_parts_are_joined_in_the_order_given(client: openai.OpenAI) -> None:
    chunks = [b"alpha-", b"beta-", b"gamma"]
    upload_id = _upload(client, sum(map(len, chunks)))
    parts = [client.uploads.parts.create(upload_id, data=io.BytesIO(c)) for c in chunks]
    assert all(p.id.startswith("part_") and p.upload_id == upload_id and p.object == "upload.part" for p in parts)
    # Completed in a different order than they were sent: the file follows part_ids.
    order = [parts[2].id, parts[0].id, parts[1].id]
    done = client.uploads.complete(upload_id, part_ids=order)
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == done.bytes and done.file.filename == "big.txt"
    assert client.files.content(done.file.id).content == b"gammaalpha-beta-"
    assert client.files.retrieve(done.file.id).id == done.file.id
    # A completed upload accepts nothing more.
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id, data=io.BytesIO(b"x"))
    with pytest.raises(openai.BadRequestError):
        client.uploads.cancel(upload_id)


def test_byte_total_must_match(client: openai.OpenAI) -> None:
    upload_id = _upload(client, 10)
    part = client.uploads.parts.create(upload_id, data=io.BytesIO(b"12345"))
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id, part_ids=[part.id])
    assert "10" in err.value.body["message"] and "5" in err.value.body["message"]  # type: ignore[index]
    # Still pending: the missing half can be added and the upload completed.
    part2 = client.uploads.parts.create(upload_id, data=io.BytesIO(b"67890"))
    done = client.uploads.complete(upload_id, part_ids=[part.id, part2.id])
    assert done.file is not None and client.files.content(done.file.id).content == b"1234567890"


def test_unknown_or_repeated_part(client: openai.OpenAI) -> None:
    upload_id = _upload(client, 4)
    part = client.uploads.parts.create(upload_id, data=io.BytesIO(b"ab"))
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id, part_ids=[part.id, part.id])
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id, part_ids=[part.id, "part_nope"])


def test_md5(client: openai.OpenAI) -> None:
    data = b"checksum me"
    upload_id = _upload(client, len(data))
    part = client.uploads.parts.create(upload_id, data=io.BytesIO(data))
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id, part_ids=[part.id], md5="0" * 32)
    assert err.value.param == "md5"
    done = client.uploads.complete(upload_id, part_ids=[part.id], md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file is not None


def test_cancel(client: openai.OpenAI) -> None:
    upload_id = _upload(client, 3)
    part = client.uploads.parts.create(upload_id, data=io.BytesIO(b"abc"))
    cancelled = client.uploads.cancel(upload_id)
    assert cancelled.status == "cancelled" and cancelled.file is None
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id, part_ids=[part.id])
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id, data=io.BytesIO(b"abc"))


def test_unknown_upload_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.uploads.cancel("upload_nope")
    assert err.value.body["message"] == "No upload found with id 'upload_nope'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create("upload_nope", data=io.BytesIO(b"x"))
    with pytest.raises(openai.NotFoundError):
        client.uploads.complete("upload_nope", part_ids=[])


def test_bad_create(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.create(bytes=1, filename="x", mime_type="text/plain", purpose="nonsense")  # type: ignore[arg-type]
    assert err.value.param == "purpose"
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.create(bytes=9 * 1024**3, filename="x", mime_type="text/plain", purpose="assistants")
    assert err.value.param == "bytes"


@pytest.fixture(scope="module")
def short_lived_uploads() -> Iterator[LoomServer]:
    # Two seconds: timestamps are whole seconds, so an upload lives between one and two (with one, a part sent
    # 50 ms after the create could find it expired when the create landed late in its second).
    server = LoomServer(extra_env={"LOOM_UPLOAD_EXPIRY_S": "2"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_expired_upload_refuses_parts_and_completion(short_lived_uploads: LoomServer) -> None:
    client = checked_client(short_lived_uploads)
    upload = client.uploads.create(bytes=2, filename="x.txt", mime_type="text/plain", purpose="assistants")
    assert upload.expires_at == upload.created_at + 2
    part = client.uploads.parts.create(upload.id, data=io.BytesIO(b"ok"))

    def refused() -> str | None:
        try:
            client.uploads.parts.create(upload.id, data=io.BytesIO(b"ok"))
        except openai.BadRequestError as exc:
            return str(exc.body["message"])  # type: ignore[index]
        return None

    assert "expired" in wait_for(refused, 10, "the upload to expire", interval=0.2)
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload.id, part_ids=[part.id])


def test_concurrent_completions_make_one_file(client: openai.OpenAI, loom_server: LoomServer) -> None:
    size = 4 * 1024 * 1024  # large enough that assembling it takes a while
    upload = client.uploads.create(bytes=size, filename="race.bin", mime_type="text/plain", purpose="assistants")
    part = client.uploads.parts.create(upload.id, data=io.BytesIO(b"r" * size))

    def complete(_: int) -> httpx.Response:
        return httpx.post(
            f"{loom_server.base_url}/uploads/{upload.id}/complete",
            json={"part_ids": [part.id]},
            headers={"Authorization": "Bearer sk-test-default"},
            timeout=60,
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(complete, range(4)))
    assert sorted(r.status_code for r in responses) == [200, 400, 400, 400]
    made = [f.id for f in client.files.list(purpose="assistants") if f.filename == "race.bin"]
    winner = next(r for r in responses if r.status_code == 200).json()
    assert made == [winner["file"]["id"]]
