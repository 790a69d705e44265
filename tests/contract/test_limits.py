"""Size limits and input no database can keep, on SQLite and PostgreSQL.

Each is refused with OpenAI's 400 before anything is written, and the thread it aimed at stays usable:
an oversized message, too many messages, invalid Unicode (lone surrogates), JSON nested too deep, an
unbounded `mime_type`; and a multipart request whose files together pass the upload limit.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.conftest import raw_client
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer

MESSAGE_LIMIT = 256_000
JSON_ERROR_START = "We could not parse the JSON body of your request."


def _error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def _post_raw(raw: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return raw.post(path, content=body, headers={"Content-Type": "application/json"})


def _texts(raw: httpx.Client, thread_id: str) -> list[str]:
    page = raw.get(f"/threads/{thread_id}/messages", params={"order": "asc", "limit": 100}).json()
    return [m["content"][0]["text"]["value"] for m in page["data"]]


@pytest.fixture()
def thread_id(raw: httpx.Client) -> str:
    response = raw.post("/threads", json={"messages": [{"role": "user", "content": "first"}]})
    assert response.status_code == 200, response.text
    thread: str = response.json()["id"]
    return thread


def _assert_usable(raw: httpx.Client, thread_id: str, before: list[str]) -> None:
    """Nothing of the refused request is in the thread, and it takes messages as before."""
    assert _texts(raw, thread_id) == before
    ok = raw.post(f"/threads/{thread_id}/messages", json={"role": "user", "content": "still here"})
    assert ok.status_code == 200, ok.text
    assert _texts(raw, thread_id) == [*before, "still here"]


def test_message_text_is_limited_to_256000_characters(raw: httpx.Client, thread_id: str) -> None:
    too_long = "a" * (MESSAGE_LIMIT + 1)
    error = _error(raw.post(f"/threads/{thread_id}/messages", json={"role": "user", "content": too_long}))
    assert error == {
        "message": "Invalid 'content': string too long. Expected a string with maximum length 256000, "
        "but got a string with length 256001 instead.",
        "type": "invalid_request_error",
        "param": "content",
        "code": "string_above_max_length",
    }
    parts = [{"type": "text", "text": "short"}, {"type": "text", "text": too_long}]
    error = _error(raw.post(f"/threads/{thread_id}/messages", json={"role": "user", "content": parts}))
    assert error["param"] == "content[1].text" and error["code"] == "string_above_max_length"
    _assert_usable(raw, thread_id, ["first"])
    # Exactly the limit is accepted and kept whole.
    longest = "b" * MESSAGE_LIMIT
    assert raw.post(f"/threads/{thread_id}/messages", json={"role": "user", "content": longest}).status_code == 200
    assert _texts(raw, thread_id)[-1] == longest


def test_thread_create_limits(raw: httpx.Client) -> None:
    messages = [{"role": "user", "content": "ok"}, {"role": "user", "content": "c" * (MESSAGE_LIMIT + 1)}]
    error = _error(raw.post("/threads", json={"messages": messages}))
    assert error["param"] == "messages[1].content" and error["code"] == "string_above_max_length"
    error = _error(raw.post("/threads", json={"messages": [{"role": "user", "content": "m"}] * 33}))
    assert error == {
        "message": "Invalid 'messages': array too long. Expected an array with maximum length 32, "
        "but got an array with length 33 instead.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "array_above_max_length",
    }
    error = _error(raw.post("/threads/runs", json={"assistant_id": "asst_x", "thread": {"messages": messages}}))
    assert error["param"] == "thread.messages[1].content"
    thirty_two = raw.post("/threads", json={"messages": [{"role": "user", "content": "m"}] * 32})
    assert thirty_two.status_code == 200
    assert len(_texts(raw, thirty_two.json()["id"])) == 32


def test_run_create_limits_write_nothing(raw: httpx.Client, thread_id: str) -> None:
    assistant = raw.post("/assistants", json={"model": "gpt-4o"}).json()["id"]
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"additional_messages": [{"role": "user", "content": "d" * (MESSAGE_LIMIT + 1)}]},
            "additional_messages[0].content",
        ),
        ({"additional_messages": [{"role": "user", "content": "x"}] * 33}, "additional_messages"),
        ({"instructions": "i" * (MESSAGE_LIMIT + 1)}, "instructions"),
        ({"additional_instructions": "i" * (MESSAGE_LIMIT + 1)}, "additional_instructions"),
    ]
    for extra, param in cases:
        error = _error(raw.post(f"/threads/{thread_id}/runs", json={"assistant_id": assistant, **extra}))
        assert error["param"] == param, error
    assert raw.get(f"/threads/{thread_id}/runs").json()["data"] == []
    _assert_usable(raw, thread_id, ["first"])


def _surrogate_bodies() -> list[tuple[str, bytes]]:
    # json.dumps escapes a lone surrogate as "\udfff": valid JSON syntax, invalid Unicode.
    bad = "x\udfffy"
    return [
        ("message text", json.dumps({"role": "user", "content": bad}).encode()),
        ("text part", json.dumps({"role": "user", "content": [{"type": "text", "text": bad}]}).encode()),
        ("metadata value", json.dumps({"role": "user", "content": "hi", "metadata": {"k": bad}}).encode()),
        ("metadata key", json.dumps({"role": "user", "content": "hi", "metadata": {bad: "v"}}).encode()),
        # The surrogate's own three bytes, unescaped (CESU-8): also not UTF-8.
        ("raw bytes", b'{"role": "user", "content": "x\xed\xbf\xbfy"}'),
    ]


@pytest.mark.parametrize(("case", "body"), _surrogate_bodies(), ids=[c for c, _ in _surrogate_bodies()])
def test_lone_surrogates_are_refused_as_invalid_json(raw: httpx.Client, thread_id: str, case: str, body: bytes) -> None:
    error = _error(_post_raw(raw, f"/threads/{thread_id}/messages", body))
    assert error["message"].startswith(JSON_ERROR_START), case
    _assert_usable(raw, thread_id, ["first"])


def test_lone_surrogates_elsewhere(raw: httpx.Client, thread_id: str) -> None:
    bad = "\udfff"
    for path, body in [
        ("/threads", {"metadata": {bad: "v"}}),
        ("/threads", {"messages": [{"role": "user", "content": bad}]}),
        (f"/threads/{thread_id}", {"metadata": {"k": bad}}),
        ("/assistants", {"model": "gpt-4o", "name": bad}),
        ("/assistants", {"model": "gpt-4o", "metadata": {bad: bad}}),
        ("/vector_stores", {"name": bad}),
        ("/uploads", {"filename": bad, "purpose": "assistants", "bytes": 1, "mime_type": "text/plain"}),
    ]:
        error = _error(_post_raw(raw, path, json.dumps(body).encode()))
        assert error["message"].startswith(JSON_ERROR_START), (path, body)
    assert raw.get(f"/threads/{thread_id}").json()["metadata"] == {}
    # A proper surrogate pair is one character (an emoji), and is kept.
    pair = raw.post(f"/threads/{thread_id}/messages", content=b'{"role": "user", "content": "\\ud83d\\ude00"}')
    assert pair.status_code == 200, pair.text
    assert _texts(raw, thread_id) == ["first", "\U0001f600"]


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def test_json_nested_too_deep(raw: httpx.Client, thread_id: str) -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a": ' * 100_000 + b"1" + b"}" * 100_000):
        for path in ("/assistants", f"/threads/{thread_id}/messages", "/threads"):
            error = _error(_post_raw(raw, path, body))
            assert error["message"].startswith(JSON_ERROR_START)
    # Parsed, but deeper than anything can be stored and read back: function parameters 150 levels deep.
    tool = {"type": "function", "function": {"name": "deep", "parameters": _nested(150)}}
    error = _error(raw.post("/assistants", json={"model": "gpt-4o", "tools": [tool]}))
    assert error["code"] == "invalid_value"
    assert error["param"].startswith("tools[0].function.parameters.properties.a.")
    assert "nested at most 64 levels" in error["message"]
    error = _error(
        raw.post(f"/threads/{thread_id}/messages", json={"role": "user", "content": "x", "metadata": _nested(70)})
    )
    assert error["param"].startswith("metadata.properties.a")
    _assert_usable(raw, thread_id, ["first"])
    # A deep but reasonable schema is kept exactly.
    tool = {"type": "function", "function": {"name": "deep", "parameters": _nested(25)}}
    created = raw.post("/assistants", json={"model": "gpt-4o", "tools": [tool]})
    assert created.status_code == 200, created.text
    again = raw.get(f"/assistants/{created.json()['id']}").json()
    assert again["tools"][0]["function"]["parameters"] == _nested(25)


def test_upload_mime_type_is_bounded(raw: httpx.Client) -> None:
    body = {"filename": "a.txt", "purpose": "assistants", "bytes": 1, "mime_type": "text/" + "x" * 100_000}
    error = _error(raw.post("/uploads", json=body))
    assert error["param"] == "mime_type" and error["code"] == "string_above_max_length"
    ok = raw.post("/uploads", json={**body, "mime_type": "application/" + "y" * 243})
    assert ok.status_code == 200, ok.text


# Multipart: the upload limit counts every file part of a request.

MB = 1024 * 1024


@pytest.fixture(scope="module")
def small(backend: str) -> Iterator[LoomServer]:
    """A server with a 1 MB file limit, on the backend under test."""
    with LoomServer(database_url=database_url_for(backend), extra_env={"LOOM_MAX_FILE_BYTES": str(MB)}) as s:
        yield s


def _disk(server: LoomServer) -> set[Path]:
    return {
        p
        for p in server.data_dir.rglob("*")
        if p.is_file() and not p.name.startswith("loom.db") and p.name != "server.log"
    }


def _form(parts: int, size: int) -> tuple[Iterator[bytes], str]:
    """A form with `parts` file parts of `size` bytes each, generated as it is sent."""
    boundary = "loom" + secrets.token_hex(8)

    def body() -> Iterator[bytes]:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'.encode()
        for i in range(parts):
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f{i}.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            yield b"z" * size
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    return body(), f"multipart/form-data; boundary={boundary}"


def test_upload_limit_counts_all_file_parts(small: LoomServer) -> None:
    with raw_client(small) as http:
        files_before = http.get("/files").json()["data"]
        disk_before = _disk(small)
        # 60 parts of just under 1 MB: each alone is within the limit, together 60 times past it.
        body, content_type = _form(60, MB - 10)
        response = http.post("/files", content=body, headers={"Content-Type": content_type})
        error = _error(response, 413)
        assert error["code"] == "file_too_large" and error["param"] == "file"
        assert "1048576 bytes" in error["message"]
        assert http.get("/files").json()["data"] == files_before
        assert _disk(small) == disk_before
        assert list((small.data_dir / "files" / "tmp").iterdir()) == []
        # Two parts that fit together are accepted: the first is the File, the second is not kept.
        body, content_type = _form(2, MB // 2)
        ok = http.post("/files", content=body, headers={"Content-Type": content_type})
        assert ok.status_code == 200, ok.text
        assert ok.json()["bytes"] == MB // 2 and ok.json()["filename"] == "f0.bin"
        assert len(_disk(small) - disk_before) == 1
        assert list((small.data_dir / "files" / "tmp").iterdir()) == []


def test_upload_limit_counts_the_whole_request(small: LoomServer) -> None:
    """Parts that are not files count too: past the files' limit and 1 MB besides, the request is refused."""
    boundary = "loom" + secrets.token_hex(8)

    def body() -> Iterator[bytes]:
        # Many small unnamed parts: neither files nor fields the form keeps, each under every per-part limit.
        for _ in range(4000):
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'.encode()
            yield b"p" * 1000 + b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    with raw_client(small) as http:
        disk_before = _disk(small)
        response = http.post(
            "/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        error = _error(response, 413)
        assert error["code"] == "request_too_large"
        assert _disk(small) == disk_before
        # Too many file parts, even empty ones (each would be a temporary file), are refused as well.
        many, content_type = _form(40, 0)
        error = _error(http.post("/files", content=many, headers={"Content-Type": content_type}), 400)
        assert error["param"] == "file"
        assert list((small.data_dir / "files" / "tmp").iterdir()) == []
