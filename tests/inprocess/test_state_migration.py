"""Migration 0004: rows written by an earlier Loom (bookkeeping under `_` keys inside `data`) keep working.
Old-format rows are written at revision 0003, the server starts (migrating to head), and the API shows
them without any private key while their bookkeeping is in the `state` column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import create_async_engine

from loom.api.app import create_app
from loom.container import Container
from loom.records import FILE_SEARCH_CONTENT
from loom.store import tables
from loom.store.migrate import alembic_config
from tests.inprocess.conftest import KEY, inprocess_settings
from tests.support.postgres import new_database

P = "default"  # the project of the settings' API keys
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
CITATIONS = [{"kind": "file_citation", "text": "【0:0†a.txt】", "file_id": "file-a"}]
CALLS = {"call_fs": {"name": "file_search", "arguments": '{"queries": ["q"]}', "output": "passages"}}
RESULT = {"file_id": "file-a", "file_name": "a.txt", "score": 0.5, "content": [{"type": "text", "text": "hello"}]}


def _old(name: str, *extra: str) -> sa.TableClause:
    """A table as revision 0003 has it (no `state` column)."""
    columns: list[sa.ColumnClause[Any]] = [sa.column(c) for c in ("id", "project", "created_at", *extra)]
    return sa.table(name, *columns, sa.column("data", tables.Json))


def _private(value: Any, where: str = "") -> list[str]:
    """Every key starting with `_`, at any depth."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).startswith("_"):
                found.append(f"{where}.{k}")
            found += _private(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _private(v, f"{where}[{i}]")
    return found


def _old_rows() -> list[tuple[sa.TableClause, dict[str, Any]]]:
    thread = {"id": "thread_old", "object": "thread", "created_at": 1, "metadata": {}, "tool_resources": None}
    run = {
        "id": "run_old",
        "object": "thread.run",
        "created_at": 2,
        "thread_id": "thread_old",
        "assistant_id": "asst_old",
        "status": "completed",
        "usage": USAGE,
        "metadata": {},
        "_usage": USAGE,
        "_include": [FILE_SEARCH_CONTENT],
        "_citations": CITATIONS,
        "_pending_images": ["file-img"],
    }
    step = {
        "id": "step_old",
        "object": "thread.run.step",
        "created_at": 3,
        "run_id": "run_old",
        "assistant_id": "asst_old",
        "thread_id": "thread_old",
        "type": "tool_calls",
        "status": "completed",
        "step_details": {
            "type": "tool_calls",
            "tool_calls": [{"id": "call_fs", "type": "file_search", "file_search": {"results": [RESULT]}}],
        },
        "usage": None,
        "metadata": {},
        "_calls": CALLS,
    }
    store = {"id": "vs_old", "object": "vector_store", "created_at": 4, "name": "old", "usage_bytes": 0}
    store.update(status="completed", metadata={}, file_counts={}, last_active_at=4, expires_after=None, expires_at=None)
    vs_file = {"id": "file-a", "object": "vector_store.file", "created_at": 5, "vector_store_id": "vs_old"}
    vs_file.update(status="completed", usage_bytes=5, last_error=None, attributes={}, _attempts=2)
    upload = {"id": "upload_old", "object": "upload", "created_at": 6, "bytes": 3, "filename": "a.txt"}
    upload.update(purpose="assistants", status="pending", expires_at=2**40, file=None)
    upload.update(_mime_type="text/plain", _file_ttl=7200)
    return [
        (_old("threads"), {"data": thread}),
        (_old("runs", "thread_id", "status"), {"data": run, "thread_id": "thread_old", "status": "completed"}),
        (_old("run_steps", "thread_id", "run_id"), {"data": step, "thread_id": "thread_old", "run_id": "run_old"}),
        (_old("vector_stores"), {"data": store}),
        (
            _old("vector_store_files", "vector_store_id", "status"),
            {"data": vs_file, "vector_store_id": "vs_old", "status": "completed"},
        ),
        (_old("uploads", "status", "expires_at"), {"data": upload, "status": "pending", "expires_at": 2**40}),
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_old_rows_move_their_private_keys_into_state(backend: str, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'loom.db'}" if backend == "sqlite" else new_database("mig4")
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0003"))
            for table, values in _old_rows():
                data = values["data"]
                await conn.execute(
                    table.insert().values(id=data["id"], project=P, created_at=data["created_at"], **values)
                )

        settings = inprocess_settings(tmp_path).model_copy(update={"database_url": url})
        app = create_app(Container(settings))
        async with app.router.lifespan_context(app):
            headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://loom/v1", headers=headers) as api:
                run = (await api.get("/threads/thread_old/runs/run_old")).json()
                runs = (await api.get("/threads/thread_old/runs")).json()
                step = (await api.get("/threads/thread_old/runs/run_old/steps/step_old")).json()
                with_content = (
                    await api.get(
                        "/threads/thread_old/runs/run_old/steps/step_old", params={"include[]": FILE_SEARCH_CONTENT}
                    )
                ).json()
                steps = (await api.get("/threads/thread_old/runs/run_old/steps")).json()
                vs_file = (await api.get("/vector_stores/vs_old/files/file-a")).json()
                cancelled = await api.post("/uploads/upload_old/cancel")
        assert run["usage"] == USAGE and run["status"] == "completed"
        assert step["step_details"]["tool_calls"][0]["file_search"]["results"][0].keys() == RESULT.keys() - {"content"}
        assert with_content["step_details"]["tool_calls"][0]["file_search"]["results"] == [RESULT]
        assert vs_file["status"] == "completed" and cancelled.status_code == 200, cancelled.text
        for shown in (run, runs, step, with_content, steps, vs_file, cancelled.json()):
            assert _private(shown) == [], shown

        async with engine.connect() as conn:
            state = {
                name: (await conn.execute(sa.select(t.c.data, t.c.state))).one()
                for name, t in (
                    ("runs", tables.runs),
                    ("run_steps", tables.run_steps),
                    ("vector_store_files", tables.vector_store_files),
                    ("uploads", tables.uploads),
                )
            }
        for name, (data, _state) in state.items():
            assert _private(data) == [], name
        assert state["runs"][1] == {
            "usage": USAGE,
            "include": [FILE_SEARCH_CONTENT],
            "citations": CITATIONS,
            "pending_images": ["file-img"],
        }
        assert state["run_steps"][1] == {"calls": CALLS}
        assert state["vector_store_files"][1] == {"attempts": 2}
        assert state["uploads"][1] == {"mime_type": "text/plain", "file_ttl": 7200}
    finally:
        await engine.dispose()


async def test_an_archive_of_an_earlier_version_imports_its_private_keys_into_state(tmp_path: Path) -> None:
    """`loom import` of an archive exported before the `state` column: rows carry `_` keys in `data`."""
    from loom.admin.archive import Bundle, import_bundle
    from loom.store.blobstore import LocalBlobStorage
    from loom.store.db import Database
    from loom.store.migrate import migrate

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'loom.db'}")
    try:
        await migrate(db.engine)
        bundle = Bundle(project="old")
        for table, values in _old_rows():
            if table.name != "uploads":  # not archived
                data = values["data"]
                bundle.rows[table.name].append({"id": data["id"], "created_at": data["created_at"], **values})
        await import_bundle(db, LocalBlobStorage(tmp_path / "blobs"), bundle, P)
        async with db.engine.connect() as conn:
            run = (await conn.execute(sa.select(tables.runs.c.data, tables.runs.c.state))).one()
            step = (await conn.execute(sa.select(tables.run_steps.c.data, tables.run_steps.c.state))).one()
            vs_file = (
                await conn.execute(sa.select(tables.vector_store_files.c.data, tables.vector_store_files.c.state))
            ).one()
        for data, _state in (run, step, vs_file):
            assert _private(data) == [], data
        assert run.state["usage"] == USAGE and run.state["citations"] == CITATIONS
        assert step.state == {"calls": CALLS}
        assert vs_file.state is None  # indexed anew by the importing server, its attempts from 0
    finally:
        await db.engine.dispose()
