"""Migration 0006: a database of an earlier Loom stored absolute host paths of file bytes; after it, rows
hold blob keys, and the server (local store by default) serves the same bytes from them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from loom.api.app import create_app
from loom.container import Container
from loom.store import tables
from loom.store.migrate import alembic_config
from tests.inprocess.conftest import KEY, inprocess_settings
from tests.support.postgres import new_database

P = "default"
FILE_ID = "file-0123456789abcdefghijAB"
PART_ID = "part_0123456789abcdefghijCD"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_absolute_paths_become_keys_and_the_bytes_are_served(backend: str, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'loom.db'}" if backend == "sqlite" else new_database("mig5")
    files_dir = tmp_path / "files"
    old_file = files_dir / "AB" / FILE_ID
    old_part = files_dir / "CD" / PART_ID
    for path, stored in ((old_file, b"bytes of an earlier version"), (old_part, b"part")):
        path.parent.mkdir(parents=True)
        path.write_bytes(stored)
    wire = {"id": FILE_ID, "object": "file", "bytes": 27, "created_at": 1, "expires_at": None}
    wire.update(filename="old.txt", purpose="assistants", status="processed", status_details=None)
    upload = {"id": "upload_old", "object": "upload", "created_at": 2, "bytes": 4, "filename": "p.txt"}
    upload.update(purpose="assistants", status="pending", expires_at=2**40, file=None)
    part = {"id": PART_ID, "object": "upload.part", "created_at": 3, "upload_id": "upload_old"}
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0005"))
            await conn.execute(
                tables.files.insert().values(
                    id=FILE_ID, project=P, created_at=1, data=wire, purpose="assistants", path=str(old_file)
                )
            )
            await conn.execute(
                tables.uploads.insert().values(
                    id="upload_old", project=P, created_at=2, data=upload, status="pending", expires_at=2**40
                )
            )
            await conn.execute(
                tables.upload_parts.insert().values(
                    id=PART_ID, project=P, created_at=3, data=part, upload_id="upload_old", path=str(old_part), bytes=4
                )
            )

        settings = inprocess_settings(tmp_path).model_copy(update={"database_url": url})
        app = create_app(Container(settings))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://loom/v1", headers=headers) as api:
                content = await api.get(f"/files/{FILE_ID}/content")
                completed = await api.post("/uploads/upload_old/complete", json={"part_ids": [PART_ID]})
                assembled = await api.get(f"/files/{completed.json()['file']['id']}/content")
        assert content.status_code == 200 and content.content == b"bytes of an earlier version"
        assert content.headers["content-length"] == "27"
        assert completed.status_code == 200, completed.text
        assert assembled.content == b"part"

        async with engine.connect() as conn:
            paths = dict((await conn.execute(sa.select(tables.files.c.id, tables.files.c.path))).all())
        assert paths[FILE_ID] == f"AB/{FILE_ID}"
        assert all(not p.startswith("/") for p in paths.values())
        # The part, assembled into the new File, was deleted from the store.
        assert not old_part.exists()
    finally:
        await engine.dispose()
