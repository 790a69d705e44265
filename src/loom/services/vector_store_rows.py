"""Vector store rows, usable inside any transaction (the API service, the ingestion worker, and the
thread and assistant helpers all call these).

Rows: `vector_stores` (the store object, `expires_at` column), `vector_store_files` (id = the File's id,
unique per store; `status` column; `batch_id`), `vector_store_file_batches`. `file_counts` of stores
and batches are counted from the file rows on every read, so they are exact; `usage_bytes` of a store
is kept in its row, changed under the row's lock when a file completes or leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom import ids
from loom.clock import now
from loom.errors import NotFound
from loom.retrieval.chunking import AUTO, ChunkingStrategy
from loom.services.common import require_files
from loom.store import tables
from loom.store.collections import threads
from loom.store.collections import vector_stores as stores
from loom.store.repo import Collection as Table

store_files = Table(tables.vector_store_files, parent_column="vector_store_id")
batches = Table(tables.vector_store_file_batches, parent_column="vector_store_id")

DAY_S = 86_400
THREAD_STORE_DAYS = 7  # stores made for a thread's attachments expire 7 days after last use (as OpenAI's)
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")


def count_statuses(rows: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts = dict.fromkeys(FILE_STATUSES, 0)
    for status, n in rows:
        counts[status] = counts.get(status, 0) + int(n)
    return {**counts, "total": sum(counts[s] for s in FILE_STATUSES)}


def is_expired(store: Mapping[str, Any]) -> bool:
    expires_at = store.get("expires_at")
    return expires_at is not None and expires_at <= now()


async def file_counts(conn: AsyncConnection, vector_store_id: str, batch_id: str | None = None) -> dict[str, int]:
    t = tables.vector_store_files
    where = [t.c.vector_store_id == vector_store_id]
    if batch_id is not None:
        where.append(t.c.batch_id == batch_id)
    rows = (await conn.execute(sa.select(t.c.status, sa.func.count()).where(*where).group_by(t.c.status))).all()
    return count_statuses((r[0], r[1]) for r in rows)


async def store_wire(conn: AsyncConnection, store: dict[str, Any]) -> dict[str, Any]:
    """The store as the API shows it: counts from the file rows, status from them and the clock."""
    counts = await file_counts(conn, store["id"])
    wire = dict(store)
    wire["file_counts"] = counts
    if wire.get("expires_after") is None:
        # Optional but not nullable in OpenAI's schema: absent when the store has no expiry policy.
        wire.pop("expires_after", None)
    if is_expired(store):
        wire["status"] = "expired"
    else:
        wire["status"] = "in_progress" if counts["in_progress"] else "completed"
    return wire


async def insert_store(
    conn: AsyncConnection,
    project: str,
    *,
    name: str | None = None,
    file_ids: Sequence[str] = (),
    chunking: ChunkingStrategy = AUTO,
    metadata: Mapping[str, str] | None = None,
    expires_days: int | None = None,
) -> dict[str, Any]:
    """Create a store (and its files, `in_progress`); the ingestion worker finds them by itself."""
    await require_files(conn, project, file_ids)
    created = now()
    store: dict[str, Any] = {
        "id": ids.new_id("vector_store"),
        "object": "vector_store",
        "created_at": created,
        "name": name or "",
        "usage_bytes": 0,
        "file_counts": count_statuses([]),
        "status": "completed",
        "last_active_at": created,
        "metadata": dict(metadata or {}),
        "expires_after": None,
        "expires_at": None,
    }
    if expires_days is not None:
        store["expires_after"] = {"anchor": "last_active_at", "days": expires_days}
        store["expires_at"] = created + expires_days * DAY_S
    await stores.insert(conn, project, store, expires_at=store["expires_at"])
    for file_id in dict.fromkeys(file_ids):
        await attach_file(conn, project, store["id"], file_id, chunking, None)
    return store


async def create_helper_store(conn: AsyncConnection, project: str, helper: Any, param: str) -> str:
    """`tool_resources.file_search.vector_stores[i]` (`VectorStoreHelper`): a new store; returns its id."""
    chunking = AUTO
    raw = getattr(helper, "chunking_strategy", None)
    static = getattr(raw, "static", None)
    if static is not None:
        chunking = ChunkingStrategy(static.max_chunk_size_tokens, static.chunk_overlap_tokens)
    store = await insert_store(
        conn, project, file_ids=list(helper.file_ids or []), chunking=chunking, metadata=helper.metadata
    )
    return str(store["id"])


async def attach_file(
    conn: AsyncConnection,
    project: str,
    vector_store_id: str,
    file_id: str,
    chunking: ChunkingStrategy,
    attributes: Mapping[str, Any] | None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """A file row `in_progress` (replacing the file's earlier row in this store, if any)."""
    await remove_file_row(conn, project, vector_store_id, file_id)
    obj: dict[str, Any] = {
        "id": file_id,
        "object": "vector_store.file",
        "usage_bytes": 0,
        "created_at": now(),
        "vector_store_id": vector_store_id,
        "status": "in_progress",
        "last_error": None,
        "chunking_strategy": chunking.to_wire(),
        "attributes": dict(attributes or {}),
    }
    await store_files.insert(
        conn, project, obj, vector_store_id=vector_store_id, status="in_progress", batch_id=batch_id
    )
    return obj


async def add_usage(conn: AsyncConnection, project: str, vector_store_id: str, delta: int) -> None:
    if not delta:
        return
    row = await stores.get_row(conn, project, vector_store_id, lock=True)
    if row is None:
        return
    store = dict(row.data)
    store["usage_bytes"] = max(0, int(store.get("usage_bytes", 0)) + delta)
    await stores.replace(conn, project, store)


async def remove_file_row(conn: AsyncConnection, project: str, vector_store_id: str, file_id: str) -> bool:
    row = await store_files.get_row(conn, project, file_id, parent=vector_store_id, lock=True)
    if row is None:
        return False
    await store_files.delete(conn, project, file_id, parent=vector_store_id)
    await add_usage(conn, project, vector_store_id, -int(row.data.get("usage_bytes", 0)))
    return True


async def attach_to_thread_store(conn: AsyncConnection, project: str, thread_id: str, file_ids: Sequence[str]) -> None:
    """Message attachments for file_search: into the thread's store, made on first use (as OpenAI did)."""
    if not file_ids:
        return
    thread = await threads.get(conn, project, thread_id)
    if thread is None:
        raise NotFound("thread", thread_id)
    resources = dict(thread.get("tool_resources") or {})
    store_ids = list((resources.get("file_search") or {}).get("vector_store_ids") or [])
    store_id = store_ids[0] if store_ids else None
    if store_id is None or await stores.get(conn, project, store_id) is None:
        store = await insert_store(conn, project, name=f"Vector store for {thread_id}", expires_days=THREAD_STORE_DAYS)
        store_id = store["id"]
        resources["file_search"] = {"vector_store_ids": [store_id]}
        thread["tool_resources"] = resources
        await threads.replace(conn, project, thread)
    for file_id in dict.fromkeys(file_ids):
        existing = await store_files.get(conn, project, file_id, parent=store_id)
        if existing is None or existing["status"] in ("failed", "cancelled"):
            await attach_file(conn, project, store_id, file_id, AUTO, None)
