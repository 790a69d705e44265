"""Loom servers with their file bytes in object storage (a real SeaweedFS): a store that goes down fails
requests with OpenAI's `server_error` (503) and leaves no row; two replicas on separate data directories
and one PostgreSQL serve each other's files; the janitor removes objects no row names."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa

from loom.container import Container
from loom.store import tables
from loom.store.blobstore import bytes_chunks, file_key
from tests.conftest import DEFAULT_KEY, s3_blob_env, sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.inprocess.conftest import inprocess_settings
from tests.support.postgres import new_database
from tests.support.seaweed import SeaweedS3
from tests.support.server import LoomServer
from tests.support.wait import wait_for


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def test_object_storage_down_fails_with_server_error_and_leaves_no_row() -> None:
    with SeaweedS3() as s3:
        server = LoomServer(extra_env=s3_blob_env(s3)).start()
        try:
            client = sdk_client(server)
            kept = client.files.create(file=("kept.txt", b"stored while the store was up"), purpose="assistants")
            upload = client.uploads.create(bytes=4, filename="p.txt", mime_type="text/plain", purpose="assistants")
            s3.kill()
            http = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {DEFAULT_KEY}"})
            with http:
                refused = http.post("/files", data={"purpose": "assistants"}, files={"file": ("a.txt", b"abc")})
                part = http.post(f"/uploads/{upload.id}/parts", files={"data": ("d", b"data")})
                download = http.get(f"/files/{kept.id}/content")
                listed = http.get("/files")
            for response in (refused, part, download):
                assert response.status_code == 503, response.text
                error = _error(response)
                assert error["type"] == "server_error" and error["code"] is None and error["param"] is None
                assert "error while processing your request" in str(error["message"])
            # No half-written row: the refused upload made no File and no part; the server stays healthy.
            assert listed.status_code == 200 and [f["id"] for f in listed.json()["data"]] == [kept.id]
            with pytest.raises(openai.BadRequestError):
                client.uploads.complete(upload.id, part_ids=["part_none"])
            assert client.files.retrieve(kept.id).bytes == len(b"stored while the store was up")
            with contextlib.closing(sqlite3.connect(server.data_dir / "loom.db")) as db:
                counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("files", "upload_parts")}
            assert counts == {"files": 1, "upload_parts": 0}
        finally:
            server.stop()


def test_two_replicas_with_separate_data_dirs_serve_each_others_files(
    seaweed: SeaweedS3, upstream: FakeUpstream
) -> None:
    url = new_database()
    env = {**s3_blob_env(seaweed), "LOOM_POLL_AFTER_MS": "20", "LOOM_UPSTREAM_MAX_RETRIES": "0"}
    a = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
    try:
        b = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
        try:
            assert a.data_dir != b.data_dir
            on_a, on_b = sdk_client(a), sdk_client(b)
            text = b"The lighthouse keeper logs every passing ship in a green ledger.\n" * 40
            uploaded = on_a.files.create(file=("ships.txt", text), purpose="assistants")
            assert on_b.files.content(uploaded.id).content == text
            # Parts sent to A, completed on B: the parts are objects both reach.
            upload = on_a.uploads.create(bytes=12, filename="u.txt", mime_type="text/plain", purpose="assistants")
            first = on_a.uploads.parts.create(upload.id, data=io.BytesIO(b"hello, "))
            second = on_b.uploads.parts.create(upload.id, data=io.BytesIO(b"world"))
            done = on_b.uploads.complete(upload.id, part_ids=[first.id, second.id])
            assert done.file is not None and on_a.files.content(done.file.id).content == b"hello, world"
            # B ingests the file A stored.
            store = on_b.vector_stores.create(name="ships", file_ids=[uploaded.id])

            def ingested() -> bool:
                return on_b.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id).status != "in_progress"

            wait_for(ingested, 60, "the file's ingestion on B")
            vs_file = on_b.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id)
            assert vs_file.status == "completed", vs_file.last_error
            # Nothing of either replica's files folder holds the bytes: they are in object storage.
            for server in (a, b):
                assert [p for p in (server.data_dir / "files").rglob("file-*")] == []
            on_b.files.delete(uploaded.id)
            with pytest.raises(openai.NotFoundError):
                on_a.files.content(uploaded.id)
        finally:
            b.stop()
    finally:
        a.stop()


async def test_the_janitor_removes_objects_no_row_names_once_an_hour_old(tmp_path: Path) -> None:
    container = Container(inprocess_settings(tmp_path))
    await container.start()
    try:
        files = container.files
        kept = await files.create_output("default", "kept.txt", b"a File's bytes")
        old_orphan, young_orphan = file_key("file-orphanOld0000000000xy"), file_key("file-orphanYoung00000000xy")
        for key in (old_orphan, young_orphan):
            await container.blobs.put(key, bytes_chunks(b"left by a crash between put and insert"))
        long_ago = time.time() - 2 * 3600
        for key in (old_orphan, file_key(kept["id"])):
            os.utime(tmp_path / "files" / key, (long_ago, long_ago))
        assert await files.sweep_orphans() == 1
        assert not await container.blobs.exists(old_orphan)
        assert await container.blobs.exists(young_orphan)
        assert await container.blobs.exists(file_key(kept["id"]))  # old, but its row names it
        async with container.db.read() as conn:
            assert (await conn.execute(sa.select(tables.files.c.path))).scalars().all() == [file_key(kept["id"])]
    finally:
        await container.stop()
