"""Hostile or broken input: odd file names, oversized and truncated uploads, malformed JSON.

Each gets a clear 4xx and leaves nothing behind: no row in the database, no file on disk, nothing
written outside the data directory. These run against dedicated SQLite servers so that the data
directory and the database can be inspected directly.
"""

from __future__ import annotations

import json
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.contract.conftest import raw_client
from tests.support.server import LoomServer

MB = 1024 * 1024
SMALL_LIMIT = 1 * MB
TABLES = ("assistants", "threads", "messages", "files", "uploads", "upload_parts")


@pytest.fixture(scope="module")
def server() -> Iterator[LoomServer]:
    """Default limits (512 MB per file)."""
    with LoomServer() as s:
        yield s


@pytest.fixture(scope="module")
def small() -> Iterator[LoomServer]:
    """A 1 MB file limit and a 64 KB part limit, to test the limits cheaply."""
    with LoomServer(
        extra_env={"LOOM_MAX_FILE_BYTES": str(SMALL_LIMIT), "LOOM_MAX_UPLOAD_PART_BYTES": str(64 * 1024)}
    ) as s:
        yield s


def _rows(server: LoomServer) -> dict[str, int]:
    db = sqlite3.connect(f"file:{server.data_dir / 'loom.db'}?mode=ro", uri=True)
    try:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        db.close()


def _disk(server: LoomServer) -> set[Path]:
    """Every regular file under the data directory except the database and the log."""
    return {
        p
        for p in server.data_dir.rglob("*")
        if p.is_file() and not p.name.startswith("loom.db") and p.name != "server.log"
    }


def _temp_files(server: LoomServer) -> list[Path]:
    return [p for p in (server.data_dir / "files" / "tmp").iterdir()]


class Snapshot:
    def __init__(self, server: LoomServer) -> None:
        self.server = server
        self.rows = _rows(server)
        self.disk = _disk(server)

    def assert_unchanged(self, timeout: float = 10.0) -> None:
        """Nothing new, allowing the server a moment to finish cleaning after a dropped connection."""
        deadline = time.monotonic() + timeout
        while True:
            rows, disk = _rows(self.server), _disk(self.server)
            if rows == self.rows and disk == self.disk:
                return
            if time.monotonic() > deadline:
                assert rows == self.rows
                assert disk == self.disk, f"left on disk: {sorted(disk - self.disk)}"
            time.sleep(0.1)


def _multipart(filename: bytes, content: bytes, purpose: bytes = b"assistants") -> tuple[bytes, str]:
    """A hand-built form, so that file names reach the server byte for byte (httpx would escape them)."""
    boundary = "loom" + secrets.token_hex(8)
    b = boundary.encode()
    body = (
        b"--" + b + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose + b"\r\n"
        b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        b"--" + b + b"--\r\n"
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _post_file(server: LoomServer, filename: bytes, content: bytes = b"data") -> httpx.Response:
    body, content_type = _multipart(filename, content)
    with raw_client(server) as http:
        return http.post("/files", content=body, headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    ("raw_name", "expected"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"..\\..\\windows\\system32\\evil.dll", "evil.dll"),
        (b"/etc/shadow", "shadow"),
        (b"a\x00b\x01c\x1f\x7fd.txt", "abcd.txt"),
        (b"\x1b[31mred.txt", "[31mred.txt"),
        (b"..", "file"),
        (b"", "file"),
        (b"...hidden", "hidden"),
        ("résumé 日本.pdf".encode(), "résumé 日本.pdf"),
    ],
)
def test_odd_file_names_are_cleaned(server: LoomServer, raw_name: bytes, expected: str) -> None:
    response = _post_file(server, raw_name, b"payload")
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["filename"] == expected
    with raw_client(server) as http:
        assert http.get(f"/files/{stored['id']}").json()["filename"] == expected
        assert http.get(f"/files/{stored['id']}/content").content == b"payload"


def test_traversal_writes_nothing_outside_the_data_dir(server: LoomServer) -> None:
    marker = f"loom-escape-{secrets.token_hex(6)}"
    before = _disk(server)
    for prefix in ("../", "../../", "../../../", "files/../../", "/tmp/"):
        response = _post_file(server, f"{prefix}{marker}".encode())
        assert response.status_code == 200 and response.json()["filename"] == marker
    new = _disk(server) - before
    # The bytes are stored under Loom's own ids, inside the data directory.
    assert len(new) == 5 and all(marker not in str(p) for p in new)
    assert all(p.resolve().is_relative_to(server.data_dir.resolve()) for p in new)
    for ancestor in [*list(server.data_dir.parents)[:3], Path("/tmp"), Path.cwd()]:
        assert not (ancestor / marker).exists()


def test_very_long_name(server: LoomServer) -> None:
    for name in ("a" * 5000 + ".txt", "é" * 3000, "b" * 255):
        response = _post_file(server, name.encode())
        assert response.status_code == 200, response.text
        stored = response.json()["filename"]
        assert 0 < len(stored.encode()) <= 255
        assert stored[0] == name[0]
        if name.endswith(".txt"):
            assert stored.endswith(".txt")


def _zeros(total: int, chunk: int = MB) -> Iterator[bytes]:
    block = b"\0" * chunk
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block if n == chunk else block[:n]
        sent += n


def _streamed_form(total: int) -> tuple[Iterator[bytes], int, str]:
    """A multipart body with a `total`-byte file, generated on the fly (never held in memory)."""
    boundary = "loom" + secrets.token_hex(8)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from _zeros(total)
        yield tail

    return body(), len(head) + total + len(tail), f"multipart/form-data; boundary={boundary}"


def test_513_mb_upload_is_refused_against_the_default_limit(server: LoomServer) -> None:
    snapshot = Snapshot(server)
    body, length, content_type = _streamed_form(513 * MB)
    with raw_client(server) as http:
        # Chunked: the server cannot know the size in advance and must stop at the limit while reading.
        response = http.post("/files", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert "536870912 bytes" in error["message"]
    snapshot.assert_unchanged()
    assert _temp_files(server) == []

    # With a declared Content-Length the answer comes before the body is read.
    body, length, content_type = _streamed_form(513 * MB)
    with raw_client(server) as http:
        response = http.post(
            "/files", content=body, headers={"Content-Type": content_type, "Content-Length": str(length)}
        )
    assert response.status_code == 413
    snapshot.assert_unchanged()


@pytest.mark.parametrize("declare_length", [True, False])
def test_file_limit_is_exact(small: LoomServer, declare_length: bool) -> None:
    snapshot = Snapshot(small)
    body, length, content_type = _streamed_form(SMALL_LIMIT + 1)
    headers = {"Content-Type": content_type}
    if declare_length:
        headers["Content-Length"] = str(length)
    with raw_client(small) as http:
        response = http.post("/files", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "file_too_large"
    snapshot.assert_unchanged()
    assert _temp_files(small) == []
    body, length, content_type = _streamed_form(SMALL_LIMIT)
    with raw_client(small) as http:
        ok = http.post("/files", content=body, headers={"Content-Type": content_type})
    assert ok.status_code == 200, ok.text
    assert ok.json()["bytes"] == SMALL_LIMIT


def test_upload_part_limit(small: LoomServer) -> None:
    with raw_client(small) as http:
        upload = http.post(
            "/uploads", json={"filename": "u.bin", "purpose": "assistants", "bytes": MB, "mime_type": "text/plain"}
        ).json()
        snapshot = Snapshot(small)
        response = http.post(f"/uploads/{upload['id']}/parts", files={"data": ("d", b"x" * (64 * 1024 + 1))})
        assert response.status_code == 413, response.text
        snapshot.assert_unchanged()
        ok = http.post(f"/uploads/{upload['id']}/parts", files={"data": ("d", b"x" * (64 * 1024))})
        assert ok.status_code == 200, ok.text


def test_truncated_multipart_body(server: LoomServer) -> None:
    snapshot = Snapshot(server)
    body, content_type = _multipart(b"cut.txt", b"x" * 200_000)
    cut = body[: len(body) // 2]
    with raw_client(server) as http:
        response = http.post("/files", content=cut, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert "multipart" in response.json()["error"]["message"]
    snapshot.assert_unchanged()
    assert _temp_files(server) == []


def test_client_disconnects_mid_upload(server: LoomServer) -> None:
    snapshot = Snapshot(server)
    body, content_type = _multipart(b"gone.txt", b"y" * 2_000_000)
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-test-default\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body[: len(body) // 2])
        time.sleep(0.3)  # let the server start writing the part to disk
    snapshot.assert_unchanged()
    assert _temp_files(server) == []


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"bytes": 1,', b"[]", b"null", b"\xff\xfe\x00", b'{"filename": "x"} trailing', b""],
)
def test_malformed_json(server: LoomServer, body: bytes) -> None:
    snapshot = Snapshot(server)
    with raw_client(server) as http:
        for path in ("/uploads", "/assistants", "/threads/thread_x/messages"):
            response = http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, response.text)
            assert response.json()["error"]["type"] == "invalid_request_error"
    snapshot.assert_unchanged()


def test_multipart_without_boundary_or_wrong_type(server: LoomServer) -> None:
    snapshot = Snapshot(server)
    with raw_client(server) as http:
        for content_type in ("multipart/form-data", "application/json", "text/plain"):
            response = http.post("/files", content=b'{"purpose": "assistants"}', headers={"Content-Type": content_type})
            assert response.status_code == 400, response.text
        garbage = http.post(
            "/files", content=b"\x00\x01 not a form", headers={"Content-Type": "multipart/form-data; boundary=zz"}
        )
        assert garbage.status_code == 400
    snapshot.assert_unchanged()


def test_too_many_or_too_long_form_fields(server: LoomServer) -> None:
    snapshot = Snapshot(server)
    with raw_client(server) as http:
        fields = {f"f{i}": "x" for i in range(100)}
        response = http.post("/files", data=fields, files={"file": ("a.txt", b"a")})
        assert response.status_code == 400
        response = http.post("/files", data={"purpose": "p" * 100_000}, files={"file": ("a.txt", b"a")})
        assert response.status_code == 400
    snapshot.assert_unchanged()


def test_huge_json_body_is_refused_without_being_held(server: LoomServer) -> None:
    snapshot = Snapshot(server)
    total = 40 * MB

    def body() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o", "instructions": "'
        yield from (b"a" * MB for _ in range(total // MB))
        yield b'"}'

    with raw_client(server) as http:
        for headers in ({}, {"Content-Length": str(total + 39)}):
            response = http.post("/assistants", content=body(), headers={"Content-Type": "application/json", **headers})
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "request_too_large"
    snapshot.assert_unchanged()


def test_body_of_non_json_whitespace_is_malformed(server: LoomServer) -> None:
    with raw_client(server) as http:
        for body in (b"\x0b", b"\x0c", b"\xa0"):
            response = http.post("/threads", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (body, response.text)
        # Real JSON whitespace is an empty body, which createThread accepts.
        assert http.post("/threads", content=b" \r\n\t").status_code == 200


def test_refused_oversized_or_unstorable_input_writes_nothing(server: LoomServer) -> None:
    """Each refusal (oversized text, too many messages, lone surrogate, nesting past 64 levels) comes
    before any write: no thread, message, assistant or upload row of it remains."""
    deep: dict[str, object] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}}
    long_text = "t" * 256_001
    with raw_client(server) as http:
        thread = http.post("/threads", json={"messages": [{"role": "user", "content": "kept"}]}).json()["id"]
        assistant = http.post("/assistants", json={"model": "gpt-4o"}).json()["id"]
        snapshot = Snapshot(server)
        ok = {"role": "user", "content": "fine"}
        cases: list[tuple[str, bytes]] = [
            ("/threads", json.dumps({"messages": [ok, {"role": "user", "content": long_text}]}).encode()),
            ("/threads", json.dumps({"messages": [ok] * 33}).encode()),
            ("/threads", json.dumps({"messages": [ok, {"role": "user", "content": "x\udfff"}]}).encode()),
            ("/threads", json.dumps({"messages": [ok], "metadata": {"k\udfff": "v"}}).encode()),
            ("/threads/runs", json.dumps({"assistant_id": assistant, "thread": {"messages": [ok] * 33}}).encode()),
            (f"/threads/{thread}/messages", json.dumps({"role": "user", "content": long_text}).encode()),
            (
                f"/threads/{thread}/runs",
                json.dumps({"assistant_id": assistant, "additional_messages": [ok] * 33}).encode(),
            ),
            (
                "/assistants",
                json.dumps(
                    {"model": "gpt-4o", "tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}]}
                ).encode(),
            ),
            ("/assistants", b"[" * 50_000 + b"]" * 50_000),
            (
                "/uploads",
                json.dumps({"filename": "a", "purpose": "assistants", "bytes": 1, "mime_type": "m" * 100_000}).encode(),
            ),
        ]
        for path, body in cases:
            response = http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, (path, response.text[:300])
        snapshot.assert_unchanged()
        assert len(http.get(f"/threads/{thread}/messages").json()["data"]) == 1
