"""Files through the official SDK in strict mode, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import secrets

import httpx
import openai
import pytest


def test_upload_retrieve_download_delete(client: openai.OpenAI) -> None:
    payload = secrets.token_bytes(100_000)
    f = client.files.create(file=("report.bin", io.BytesIO(payload)), purpose="assistants")
    assert f.id.startswith("file-")
    assert f.object == "file" and f.bytes == len(payload) and f.filename == "report.bin"
    assert f.purpose == "assistants" and f.status == "processed" and f.expires_at is None
    assert client.files.retrieve(f.id).model_dump() == f.model_dump()
    assert client.files.content(f.id).content == payload
    deleted = client.files.delete(f.id)
    assert deleted.id == f.id and deleted.deleted and deleted.object == "file"
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(f.id)
    assert err.value.body["message"] == f"No file found with id '{f.id}'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(f.id)


def test_empty_file(client: openai.OpenAI) -> None:
    f = client.files.create(file=("empty.txt", io.BytesIO(b"")), purpose="user_data")
    assert f.bytes == 0
    assert client.files.content(f.id).content == b""


@pytest.mark.parametrize("purpose", ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"])
def test_accepted_purposes(client: openai.OpenAI, purpose: str) -> None:
    f = client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose=purpose)  # type: ignore[arg-type]
    # `evals` is not in the File object's purpose enum (strict SDKs would reject it): shown as user_data.
    assert f.purpose == ("user_data" if purpose == "evals" else purpose)
    assert f.id in [x.id for x in client.files.list(purpose=purpose)]
    if purpose == "batch":
        # Batch files expire after 30 days unless told otherwise.
        assert f.expires_at == f.created_at + 30 * 24 * 3600


def test_bad_purpose(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("x.txt", io.BytesIO(b"x")), purpose="assistants_output")  # type: ignore[arg-type]
    assert err.value.param == "purpose" and err.value.code == "invalid_value"


def test_expires_after(client: openai.OpenAI) -> None:
    f = client.files.create(
        file=("temp.txt", io.BytesIO(b"t")),
        purpose="assistants",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600
    assert client.files.retrieve(f.id).expires_at == f.expires_at
    for seconds in (3599, 2_592_001):
        with pytest.raises(openai.BadRequestError) as err:
            client.files.create(
                file=("t.txt", io.BytesIO(b"t")),
                purpose="assistants",
                expires_after={"anchor": "created_at", "seconds": seconds},
            )
        assert err.value.param == "expires_after.seconds"


def test_list_with_purpose_filter(client: openai.OpenAI) -> None:
    tag = secrets.token_hex(4)
    vision = [client.files.create(file=(f"{tag}-{i}.png", io.BytesIO(b"p")), purpose="vision").id for i in range(3)]
    other = client.files.create(file=(f"{tag}-a.txt", io.BytesIO(b"a")), purpose="user_data").id
    listed = [f for f in client.files.list(purpose="vision") if f.filename.startswith(tag)]
    assert [f.id for f in listed] == vision[::-1]
    assert all(f.purpose == "vision" for f in client.files.list(purpose="vision"))
    everything = {f.id for f in client.files.list()}
    assert set(vision) | {other} <= everything
    asc = [f.id for f in client.files.list(purpose="vision", order="asc", limit=1) if f.id in vision]
    assert asc == vision


def test_list_limit_range(client: openai.OpenAI, raw: httpx.Client) -> None:
    client.files.create(file=("l.txt", io.BytesIO(b"l")), purpose="assistants")
    page = client.files.list(limit=10_000)
    assert len(page.data) >= 1
    # /files accepts limits above the 100 of other lists, and uses its own default (10,000).
    assert len(client.files.list(limit=500).data) >= 1
    for bad in (0, 10_001):
        with pytest.raises(openai.BadRequestError) as err:
            client.files.list(limit=bad)
        assert err.value.param == "limit"
    body = raw.get("/files").json()
    assert body["object"] == "list" and body["has_more"] is False


def test_download_content_type_is_binary(client: openai.OpenAI, raw: httpx.Client) -> None:
    f = client.files.create(file=("page.html", io.BytesIO(b"<b>hi</b>")), purpose="assistants")
    response = raw.get(f"/files/{f.id}/content")
    assert response.status_code == 200 and response.content == b"<b>hi</b>"
    assert response.headers["content-type"] == "application/octet-stream"


def test_missing_file_or_purpose(raw: httpx.Client) -> None:
    response = raw.post("/files", files={"purpose": (None, b"assistants")})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Missing required parameter: 'file'."
    response = raw.post("/files", files={"file": ("x.txt", b"x")})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Missing required parameter: 'purpose'."
    response = raw.post("/files", data={"purpose": "assistants", "colour": "red"}, files={"file": ("x.txt", b"x")})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Unrecognized request argument supplied: colour"
