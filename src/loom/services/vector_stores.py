"""Vector stores, their files and file batches, search, and the background ingestion that fills them.

Rows: `vector_stores` (the store object, `expires_at` column), `vector_store_files` (id = the File's id,
unique per store; `status` column; `batch_id`), `vector_store_file_batches`. `file_counts` of stores
and batches are counted from the file rows on every read, so they are exact; `usage_bytes` of a store
is kept in its row, changed under the row's lock when a file completes or leaves.

Ingestion: a file row is born `in_progress`; the `IngestWorker` of every process sweeps for such rows
(woken at once by the API, and every half second anyway, which also picks up files attached by
thread/assistant helpers and files left behind by a killed process). On PostgreSQL a session advisory
lock per file makes exactly one replica ingest it; the lock dies with its connection, so a killed
replica's files are taken over by the next sweep elsewhere. Each claim counts an attempt: a file
that was interrupted `MAX_ATTEMPTS` times (say it crashes the process) fails with `server_error`
instead of looping. Parsing and chunking run in a child process with a memory and a time limit
(`loom.retrieval.isolate`), so a hostile file fails alone; embedding runs in threads, never on the
event loop, one batch of chunks at a time.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.ops import metrics
from loom.retrieval.chunking import AUTO, Chunk, ChunkingStrategy, parse_chunking_strategy
from loom.retrieval.embedding import Embedder, Vectors
from loom.retrieval.errors import FileProcessingError
from loom.retrieval.filters import parse_filter
from loom.retrieval.index import STOPWORDS, Candidate, ChunkIndex, FileEntry, StoredChunk
from loom.retrieval.ingest import ingest_file
from loom.retrieval.isolate import ParseLimits, close_host
from loom.retrieval.search import SearchResult, search
from loom.schemas.common import parse
from loom.schemas.vector_stores import (
    FileBatchCreate,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreFileUpdate,
    VectorStoreModify,
    VectorStoreSearch,
)
from loom.services.common import ListParams, forget_vector_store, require_files, threads
from loom.services.common import vector_stores as stores
from loom.store import tables
from loom.store.db import Database
from loom.store.repo import Collection as Table
from loom.store.repo import Page
from loom.supervisor import Supervisor

log = logging.getLogger(__name__)

store_files = Table(tables.vector_store_files, parent_column="vector_store_id")
batches = Table(tables.vector_store_file_batches, parent_column="vector_store_id")

DAY_S = 86_400
THREAD_STORE_DAYS = 7  # stores made for a thread's attachments expire 7 days after last use (as OpenAI's)
MAX_ATTEMPTS = 3
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")


def public(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _chunking(raw: Any, param: str = "chunking_strategy") -> ChunkingStrategy:
    return parse_chunking_strategy(raw, param=param) if raw is not None else AUTO


def _strategy_from_wire(wire: Mapping[str, Any] | None) -> ChunkingStrategy:
    static = (wire or {}).get("static")
    if not static:
        return AUTO
    return ChunkingStrategy(int(static["max_chunk_size_tokens"]), int(static["chunk_overlap_tokens"]))


def _counts(rows: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts = dict.fromkeys(FILE_STATUSES, 0)
    for status, n in rows:
        counts[status] = counts.get(status, 0) + int(n)
    return {**counts, "total": sum(counts[s] for s in FILE_STATUSES)}


def _expired(store: Mapping[str, Any]) -> bool:
    expires_at = store.get("expires_at")
    return expires_at is not None and expires_at <= now()


# Rows, usable inside any transaction (the thread and assistant helpers call these too).


async def file_counts(conn: AsyncConnection, vector_store_id: str, batch_id: str | None = None) -> dict[str, int]:
    t = tables.vector_store_files
    where = [t.c.vector_store_id == vector_store_id]
    if batch_id is not None:
        where.append(t.c.batch_id == batch_id)
    rows = (await conn.execute(sa.select(t.c.status, sa.func.count()).where(*where).group_by(t.c.status))).all()
    return _counts((r[0], r[1]) for r in rows)


async def store_wire(conn: AsyncConnection, store: dict[str, Any]) -> dict[str, Any]:
    """The store as the API shows it: counts from the file rows, status from them and the clock."""
    counts = await file_counts(conn, store["id"])
    wire = public(store)
    wire["file_counts"] = counts
    if wire.get("expires_after") is None:
        # Optional but not nullable in OpenAI's schema: absent when the store has no expiry policy.
        wire.pop("expires_after", None)
    if _expired(store):
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
        "file_counts": _counts([]),
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


async def _add_usage(conn: AsyncConnection, project: str, vector_store_id: str, delta: int) -> None:
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
    await _add_usage(conn, project, vector_store_id, -int(row.data.get("usage_bytes", 0)))
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


def rewrite_query(query: str) -> str:
    """`rewrite_query: true`: a deterministic rewrite for search engines (documented behaviour of Loom).

    Lower-cases, drops punctuation and English stop words (keeping the query if nothing would remain).
    OpenAI rewrote with a model; a keyword-and-vector index gains nothing from a chattier query.
    """
    words = re.findall(r"[^\W_]+", query.lower())
    kept = [w for w in words if w not in STOPWORDS]
    return " ".join(kept or words) or query


class SerializedWrites:
    """A ChunkIndex whose writes queue with this process's other SQLite writers.

    SQLite has one writer. The index writes through its own threaded engine, so it takes this
    process's writers' turn (`Database.writer_turn`: the lock without a transaction of its own, which
    would hold SQLite's write lock the index then waits for) and API writes never wait on it.
    """

    def __init__(self, inner: ChunkIndex, db: Database) -> None:
        self.inner = inner
        self.db = db

    async def create_schema(self) -> None:
        async with self.db.writer_turn():
            await self.inner.create_schema()

    async def put_file(
        self, vector_store_id: str, file_id: str, filename: str, attributes: Mapping[str, Any] | None = None
    ) -> None:
        async with self.db.writer_turn():
            await self.inner.put_file(vector_store_id, file_id, filename, attributes)

    async def set_attributes(self, vector_store_id: str, file_id: str, attributes: Mapping[str, Any] | None) -> None:
        async with self.db.writer_turn():
            await self.inner.set_attributes(vector_store_id, file_id, attributes)

    async def add_chunks(self, vector_store_id: str, file_id: str, chunks: Sequence[Chunk], vectors: Vectors) -> None:
        async with self.db.writer_turn():
            await self.inner.add_chunks(vector_store_id, file_id, chunks, vectors)

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self.db.writer_turn():
            return await self.inner.delete_file(vector_store_id, file_id)

    async def delete_store(self, vector_store_id: str) -> int:
        async with self.db.writer_turn():
            return await self.inner.delete_store(vector_store_id)

    async def list_files(self, vector_store_ids: Sequence[str]) -> list[FileEntry]:
        return await self.inner.list_files(vector_store_ids)

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[StoredChunk]:
        return await self.inner.file_chunks(vector_store_id, file_id)

    async def vector_candidates(
        self, vector_store_ids: Sequence[str], vector: Vectors, limit: int, file_ids: Collection[str] | None = None
    ) -> list[Candidate]:
        return await self.inner.vector_candidates(vector_store_ids, vector, limit, file_ids)

    async def keyword_candidates(
        self, vector_store_ids: Sequence[str], terms: Sequence[str], limit: int, file_ids: Collection[str] | None = None
    ) -> list[Candidate]:
        return await self.inner.keyword_candidates(vector_store_ids, terms, limit, file_ids)

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        return await self.inner.get_chunks(chunk_ids)


class VectorStoreService:
    def __init__(self, db: Database, index: ChunkIndex, embedder: Embedder, poll_after_ms: int = 100) -> None:
        self.db = db
        self.index: ChunkIndex = SerializedWrites(index, db) if db.is_sqlite else index
        self.embedder = embedder
        self.poll_after_ms = poll_after_ms
        self.worker: IngestWorker | None = None

    def _wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    async def _store(self, conn: AsyncConnection, project: str, vector_store_id: str) -> dict[str, Any]:
        store = await stores.get(conn, project, vector_store_id)
        if store is None:
            raise NotFound("vector store", vector_store_id)
        return store

    async def _live_store(self, conn: AsyncConnection, project: str, vector_store_id: str) -> dict[str, Any]:
        store = await self._store(conn, project, vector_store_id)
        if _expired(store):
            raise InvalidRequest(f"Vector store {vector_store_id} has expired and can no longer be used.")
        return store

    # Stores.

    async def create(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(VectorStoreCreate, body)
        if req.chunking_strategy is not None and not req.file_ids:
            raise InvalidRequest(
                "Invalid 'chunking_strategy': only allowed when 'file_ids' is non-empty.",
                param="chunking_strategy",
                code="invalid_value",
            )
        chunking = _chunking(req.chunking_strategy)
        async with self.db.write() as conn:
            store = await insert_store(
                conn,
                project,
                name=req.name,
                file_ids=req.file_ids or [],
                chunking=chunking,
                metadata=req.metadata,
                expires_days=req.expires_after.days if req.expires_after else None,
            )
            wire = await store_wire(conn, store)
        self._wake()
        return wire

    async def list(self, project: str, params: ListParams) -> Page:
        async with self.db.read() as conn:
            page = await stores.list(conn, project, params)
            data = [await store_wire(conn, s) for s in page.data]
        return Page(data=data, has_more=page.has_more)

    async def get(self, project: str, vector_store_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            return await store_wire(conn, await self._store(conn, project, vector_store_id))

    async def modify(self, project: str, vector_store_id: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(VectorStoreModify, body)
        async with self.db.write() as conn:
            row = await stores.get_row(conn, project, vector_store_id, lock=True)
            if row is None:
                raise NotFound("vector store", vector_store_id)
            store = dict(row.data)
            if "name" in req.model_fields_set:
                store["name"] = req.name or ""
            if req.metadata is not None:
                store["metadata"] = dict(req.metadata)
            if "expires_after" in req.model_fields_set:
                if req.expires_after is None:
                    store["expires_after"] = None
                    store["expires_at"] = None
                else:
                    store["expires_after"] = {"anchor": "last_active_at", "days": req.expires_after.days}
                    store["expires_at"] = store["last_active_at"] + req.expires_after.days * DAY_S
            await stores.replace(conn, project, store, expires_at=store["expires_at"])
            return await store_wire(conn, store)

    async def delete(self, project: str, vector_store_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            if not await stores.delete(conn, project, vector_store_id):
                raise NotFound("vector store", vector_store_id)
            await self._drop_store_rows(conn, vector_store_id)
            await forget_vector_store(conn, project, vector_store_id)
        await self.index.delete_store(vector_store_id)
        return {"id": vector_store_id, "object": "vector_store.deleted", "deleted": True}

    async def _drop_store_rows(self, conn: AsyncConnection, vector_store_id: str) -> None:
        for table in (tables.vector_store_files, tables.vector_store_file_batches):
            await conn.execute(table.delete().where(table.c.vector_store_id == vector_store_id))

    async def touch(self, project: str, store_ids: Sequence[str]) -> None:
        """Use moves `last_active_at` (and with it `expires_at`)."""
        stamp = now()
        async with self.db.write() as conn:
            for store_id in store_ids:
                row = await stores.get_row(conn, project, store_id, lock=True)
                if row is None or row.data.get("last_active_at") == stamp:
                    continue
                store = dict(row.data)
                store["last_active_at"] = stamp
                if store.get("expires_after"):
                    store["expires_at"] = stamp + int(store["expires_after"]["days"]) * DAY_S
                await stores.replace(conn, project, store, expires_at=store["expires_at"])

    async def expire(self) -> int:
        """Janitor: stores past `expires_at` lose their files and chunks; the store answers `expired`."""
        t = tables.vector_stores
        async with self.db.read() as conn:
            rows = (
                await conn.execute(sa.select(t.c.id).where(t.c.expires_at.is_not(None), t.c.expires_at <= now()))
            ).all()
        done = 0
        for (store_id,) in rows:
            async with self.db.write() as conn:
                f = tables.vector_store_files
                remaining = (
                    await conn.execute(sa.select(sa.func.count()).where(f.c.vector_store_id == store_id))
                ).scalar_one()
                if not remaining:
                    continue
                await self._drop_store_rows(conn, store_id)
            await self.index.delete_store(store_id)
            done += 1
        return done

    # Files.

    async def create_file(self, project: str, vector_store_id: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(VectorStoreFileCreate, body)
        chunking = _chunking(req.chunking_strategy)
        async with self.db.write() as conn:
            await self._live_store(conn, project, vector_store_id)
            await require_files(conn, project, [req.file_id])
            obj = await attach_file(conn, project, vector_store_id, req.file_id, chunking, req.attributes)
        self._wake()
        return public(obj)

    async def list_files(
        self, project: str, vector_store_id: str, params: ListParams, status: str | None, batch_id: str | None = None
    ) -> Page:
        t = tables.vector_store_files
        where: list[sa.ColumnElement[bool]] = []
        if status is not None:
            if status not in FILE_STATUSES:
                listed = ", ".join(f"'{s}'" for s in FILE_STATUSES)
                raise InvalidRequest(
                    f"Invalid value: '{status}'. Supported values are: {listed}.", param="filter", code="invalid_value"
                )
            where.append(t.c.status == status)
        async with self.db.read() as conn:
            await self._store(conn, project, vector_store_id)
            if batch_id is not None:
                if await batches.get(conn, project, batch_id, parent=vector_store_id) is None:
                    raise NotFound("vector store file batch", batch_id)
                where.append(t.c.batch_id == batch_id)
            page = await store_files.list(
                conn,
                project,
                params,
                parent=vector_store_id,
                where=where,
            )
        return Page(data=[public(o) for o in page.data], has_more=page.has_more)

    async def get_file(self, project: str, vector_store_id: str, file_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            await self._store(conn, project, vector_store_id)
            obj = await store_files.get(conn, project, file_id, parent=vector_store_id)
        if obj is None:
            raise NotFound("vector store file", file_id)
        return public(obj)

    async def update_file(
        self, project: str, vector_store_id: str, file_id: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        req = parse(VectorStoreFileUpdate, body)
        async with self.db.write() as conn:
            await self._store(conn, project, vector_store_id)
            row = await store_files.get_row(conn, project, file_id, parent=vector_store_id, lock=True)
            if row is None:
                raise NotFound("vector store file", file_id)
            obj = dict(row.data)
            obj["attributes"] = dict(req.attributes or {})
            await store_files.replace(conn, project, obj, parent=vector_store_id)
        await self.index.set_attributes(vector_store_id, file_id, obj["attributes"])
        return public(obj)

    async def delete_file(self, project: str, vector_store_id: str, file_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            await self._store(conn, project, vector_store_id)
            if not await remove_file_row(conn, project, vector_store_id, file_id):
                raise NotFound("vector store file", file_id)
        await self.index.delete_file(vector_store_id, file_id)
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    async def file_content(self, project: str, vector_store_id: str, file_id: str) -> dict[str, Any]:
        """The parsed text, rebuilt from the chunks (their overlaps counted once)."""
        await self.get_file(project, vector_store_id, file_id)
        chunks = await self.index.file_chunks(vector_store_id, file_id)
        text = ""
        covered = 0
        for chunk in chunks:
            if chunk.end <= covered:
                continue
            text += chunk.text[max(0, covered - chunk.start) :] if chunk.start < covered else chunk.text
            covered = chunk.end
        data = [{"type": "text", "text": text}] if text else []
        return {"object": "vector_store.file_content.page", "data": data, "has_more": False, "next_page": None}

    async def forget_file(self, project: str, file_id: str) -> None:
        """A File was deleted: it leaves every store of its project."""
        t = tables.vector_store_files
        async with self.db.write() as conn:
            store_ids = list(
                (await conn.execute(sa.select(t.c.vector_store_id).where(t.c.project == project, t.c.id == file_id)))
                .scalars()
                .all()
            )
            for store_id in store_ids:
                await remove_file_row(conn, project, store_id, file_id)
        for store_id in store_ids:
            await self.index.delete_file(store_id, file_id)

    # Batches.

    async def _batch_wire(self, conn: AsyncConnection, batch: dict[str, Any]) -> dict[str, Any]:
        counts = await file_counts(conn, batch["vector_store_id"], batch["id"])
        wire = public(batch)
        wire["file_counts"] = counts
        if batch.get("status") != "cancelled":
            wire["status"] = "in_progress" if counts["in_progress"] else "completed"
        return wire

    async def create_batch(self, project: str, vector_store_id: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(FileBatchCreate, body)
        items: list[tuple[str, ChunkingStrategy, Mapping[str, Any] | None]] = []
        if req.files is not None:
            for i, f in enumerate(req.files):
                chunking = _chunking(f.chunking_strategy, f"files[{i}].chunking_strategy")
                items.append((f.file_id, chunking, f.attributes))
        else:
            chunking = _chunking(req.chunking_strategy)
            items = [(file_id, chunking, req.attributes) for file_id in dict.fromkeys(req.file_ids or [])]
        batch: dict[str, Any] = {
            "id": ids.new_id("file_batch"),
            "object": "vector_store.file_batch",
            "created_at": now(),
            "vector_store_id": vector_store_id,
            "status": "in_progress",
            "file_counts": _counts([]),
        }
        async with self.db.write() as conn:
            await self._live_store(conn, project, vector_store_id)
            await require_files(conn, project, [i[0] for i in items])
            await batches.insert(conn, project, batch, vector_store_id=vector_store_id)
            for file_id, chunking, attributes in items:
                await attach_file(conn, project, vector_store_id, file_id, chunking, attributes, batch["id"])
            wire = await self._batch_wire(conn, batch)
        self._wake()
        return wire

    async def get_batch(self, project: str, vector_store_id: str, batch_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            await self._store(conn, project, vector_store_id)
            batch = await batches.get(conn, project, batch_id, parent=vector_store_id)
            if batch is None:
                raise NotFound("vector store file batch", batch_id)
            return await self._batch_wire(conn, batch)

    async def cancel_batch(self, project: str, vector_store_id: str, batch_id: str) -> dict[str, Any]:
        t = tables.vector_store_files
        async with self.db.write() as conn:
            await self._store(conn, project, vector_store_id)
            batch = await batches.get(conn, project, batch_id, parent=vector_store_id)
            if batch is None:
                raise NotFound("vector store file batch", batch_id)
            wire = await self._batch_wire(conn, batch)
            if wire["status"] != "in_progress":
                raise InvalidRequest(f"Cannot cancel a vector store file batch with status '{wire['status']}'.")
            batch["status"] = "cancelled"
            await batches.replace(conn, project, batch, parent=vector_store_id)
            rows = (
                await conn.execute(
                    sa.select(t.c.data).where(
                        t.c.vector_store_id == vector_store_id, t.c.batch_id == batch_id, t.c.status == "in_progress"
                    )
                )
            ).all()
            for (data,) in rows:
                obj = {**dict(data), "status": "cancelled"}
                await store_files.replace(conn, project, obj, parent=vector_store_id, status="cancelled")
            return await self._batch_wire(conn, batch)

    # Search.

    async def search(self, project: str, vector_store_id: str, body: dict[str, Any]) -> dict[str, Any]:
        req = parse(VectorStoreSearch, body)
        flt = parse_filter(req.filters) if req.filters is not None else None
        queries = [req.query] if isinstance(req.query, str) else list(req.query)
        if req.rewrite_query:
            queries = [rewrite_query(q) for q in queries]
        async with self.db.read() as conn:
            await self._live_store(conn, project, vector_store_id)
        threshold = req.ranking_options.score_threshold if req.ranking_options else None
        results = await search(
            self.index,
            self.embedder,
            [vector_store_id],
            queries,
            max_num_results=req.max_num_results or 10,
            filters=flt,
            score_threshold=threshold or 0.0,
        )
        await self.touch(project, [vector_store_id])
        return {
            "object": "vector_store.search_results.page",
            "search_query": queries,
            "data": [r.to_wire() for r in results],
            "has_more": False,
            "next_page": None,
        }

    async def search_for_run(
        self,
        project: str,
        store_ids: Sequence[str],
        queries: Sequence[str],
        *,
        max_num_results: int,
        score_threshold: float,
        wait_s: float = 60.0,
    ) -> builtins.list[SearchResult]:
        """File search inside a run: waits (bounded) for files still ingesting, then searches live stores."""
        live: builtins.list[str] = []
        async with self.db.read() as conn:
            for store_id in dict.fromkeys(store_ids):
                store = await stores.get(conn, project, store_id)
                if store is not None and not _expired(store):
                    live.append(store_id)
        if not live:
            return []
        await self.wait_ready(live, wait_s)
        results = await search(
            self.index,
            self.embedder,
            live,
            list(queries),
            max_num_results=max_num_results,
            score_threshold=score_threshold,
        )
        await self.touch(project, live)
        return results

    async def wait_ready(self, store_ids: Sequence[str], timeout_s: float) -> None:
        t = tables.vector_store_files
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            async with self.db.read() as conn:
                pending = (
                    await conn.execute(
                        sa.select(sa.func.count()).where(
                            t.c.vector_store_id.in_(list(store_ids)), t.c.status == "in_progress"
                        )
                    )
                ).scalar_one()
            if not pending:
                return
            self._wake()
            await asyncio.sleep(0.2)


def _lock_key(vector_store_id: str, file_id: str) -> int:
    digest = hashlib.blake2b(f"{vector_store_id}/{file_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class IngestWorker:
    """Finds `in_progress` vector store files and ingests them, a few at a time, off the event loop."""

    def __init__(
        self,
        db: Database,
        service: VectorStoreService,
        blobs_path: Any,
        *,
        concurrency: int = 2,
        poll_s: float = 0.5,
        janitor_s: float = 60.0,
        limits: ParseLimits | None = None,
    ) -> None:
        self.db = db
        self.limits = limits or ParseLimits()
        self.service = service
        self.path_for = blobs_path  # file id -> Path of its bytes
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.janitor_s = janitor_s
        self._wake = asyncio.Event()
        self._inflight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._janitor_task: asyncio.Task[None] | None = None
        service.worker = self

    def wake(self) -> None:
        self._wake.set()

    async def start(self, supervisor: Supervisor) -> None:
        self._loop_task = supervisor.start("loom-ingest", self._run)
        self._janitor_task = supervisor.start("loom-vector-store-janitor", self._janitor)

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, self._janitor_task, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await close_host()

    async def _janitor(self) -> None:
        while True:  # supervised (loom.supervisor): a failed pass is logged and the loop restarted
            await self.service.expire()
            await asyncio.sleep(self.janitor_s)

    async def _run(self) -> None:
        while True:  # supervised (loom.supervisor): a failed sweep is logged and the loop restarted
            await self.sweep()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def sweep(self) -> None:
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return
        t = tables.vector_store_files
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.project, t.c.vector_store_id, t.c.id)
                    .where(t.c.status == "in_progress")
                    .order_by(t.c.seq)
                    .limit(free + len(self._inflight) + 20)
                )
            ).all()
        metrics.INGEST_QUEUE.set(len(rows))
        for project, store_id, file_id in rows:
            key = (store_id, file_id)
            if key in self._inflight:
                continue
            if len(self._inflight) >= self.concurrency:
                break
            task = asyncio.create_task(self._guarded(project, store_id, file_id), name=f"ingest-{file_id}")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], _task: object = None) -> None:
        self._inflight.pop(key, None)
        self._wake.set()

    async def _guarded(self, project: str, store_id: str, file_id: str) -> None:
        if self.db.is_sqlite:
            await self._ingest(project, store_id, file_id)
            return
        # One replica per file: the advisory lock lives as long as this connection.
        async with self.db.engine.connect() as lock_conn:
            key = _lock_key(store_id, file_id)
            got = (await lock_conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
            await lock_conn.commit()
            if not got:
                return
            try:
                await self._ingest(project, store_id, file_id)
            finally:
                with contextlib.suppress(Exception):
                    await lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    await lock_conn.commit()

    async def _claim(self, project: str, store_id: str, file_id: str) -> dict[str, Any] | None:
        """Count an attempt on a file still `in_progress`; fail it when it has had too many."""
        async with self.db.write() as conn:
            row = await store_files.get_row(conn, project, file_id, parent=store_id, lock=True)
            if row is None or row.status != "in_progress":
                return None
            obj = dict(row.data)
            attempts = int(obj.get("_attempts", 0))
            if attempts >= MAX_ATTEMPTS:
                obj.update(
                    status="failed",
                    last_error={"code": "server_error", "message": "Indexing was interrupted too many times."},
                )
                await store_files.replace(conn, project, obj, parent=store_id, status="failed")
                return None
            obj["_attempts"] = attempts + 1
            await store_files.replace(conn, project, obj, parent=store_id)
            file_row = (
                await conn.execute(
                    sa.select(tables.files.c.data).where(
                        tables.files.c.id == file_id, tables.files.c.project == project
                    )
                )
            ).first()
            obj["_filename"] = dict(file_row[0])["filename"] if file_row is not None else None
            return obj

    async def _ingest(self, project: str, store_id: str, file_id: str) -> None:
        obj = await self._claim(project, store_id, file_id)
        if obj is None:
            return
        index = self.service.index
        error: dict[str, str] | None = None
        usage = 0
        try:
            if obj["_filename"] is None:
                raise FileProcessingError("The file no longer exists.")
            path: Path = self.path_for(file_id)
            result = await ingest_file(
                index,
                self.service.embedder,
                vector_store_id=store_id,
                file_id=file_id,
                filename=obj["_filename"],
                path=path,
                chunking=_strategy_from_wire(obj.get("chunking_strategy")),
                attributes=obj.get("attributes"),
                limits=self.limits,
            )
            usage = result.text_bytes
        except FileProcessingError as exc:
            error = {"code": exc.code or "server_error", "message": exc.message}
        except asyncio.CancelledError:
            raise  # shutting down: the file stays in_progress and is resumed at the next start
        except Exception:
            log.exception("ingesting %s into %s failed", file_id, store_id)
            error = {"code": "server_error", "message": "The file could not be indexed because of a server error."}
        async with self.db.write() as conn:
            row = await store_files.get_row(conn, project, file_id, parent=store_id, lock=True)
            keep = row is not None and row.status == "in_progress" and error is None
            if row is not None and row.status == "in_progress":
                done = dict(row.data)
                done.pop("_attempts", None)
                if error is None:
                    done.update(status="completed", usage_bytes=usage, last_error=None)
                else:
                    done.update(status="failed", usage_bytes=0, last_error=error)
                await store_files.replace(conn, project, done, parent=store_id, status=done["status"])
                if error is None:
                    await _add_usage(conn, project, store_id, usage)
        metrics.INGEST_OUTCOMES.labels("completed" if error is None else "failed").inc()
        if not keep:
            # Detached, cancelled or failed meanwhile: no chunks of it may stay searchable.
            still_attached = row is not None and row.status == "completed"
            if not still_attached:
                await index.delete_file(store_id, file_id)
