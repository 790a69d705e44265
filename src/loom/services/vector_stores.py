"""The vector store API: stores, their files and file batches, and search.

The rows live in `loom.services.vector_store_rows`; search glue in `loom.services.vector_store_search`;
files are ingested in the background by `loom.jobs.ingest.IngestWorker`, which the service wakes.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.records import VectorStoreFile, VectorStoreFileRecord
from loom.retrieval.chunking import AUTO, ChunkingStrategy, parse_chunking_strategy
from loom.retrieval.embedding import Embedder, Embedders
from loom.retrieval.index import ChunkIndex
from loom.retrieval.search import SearchResult
from loom.schemas.common import parse
from loom.schemas.vector_stores import (
    FileBatchCreate,
    VectorStoreCreate,
    VectorStoreFileCreate,
    VectorStoreFileUpdate,
    VectorStoreModify,
)
from loom.services.common import ListParams, forget_vector_store, require_files
from loom.services.serialized_index import SerializedWrites
from loom.services.store_embedders import ingest_embedder, search_stores, store_embedder_names
from loom.services.vector_store_rows import (
    DAY_S,
    FILE_STATUSES,
    attach_file,
    batches,
    count_statuses,
    file_counts,
    insert_store,
    is_expired,
    remove_file_row,
    store_files,
    store_wire,
)
from loom.services.vector_store_search import SearchRequest, live_store_ids, wait_ingested
from loom.store import tables
from loom.store.collections import vector_stores as stores
from loom.store.db import Database
from loom.store.repo import Page


class Waker(Protocol):
    """The ingestion worker, as the service sees it: told when new files wait."""

    def wake(self) -> None: ...


def _chunking(raw: Any, param: str = "chunking_strategy") -> ChunkingStrategy:
    return parse_chunking_strategy(raw, param=param) if raw is not None else AUTO


class VectorStoreService:
    def __init__(
        self,
        db: Database,
        index: ChunkIndex,
        embedder: Embedder,
        poll_after_ms: int = 100,
        embedders: Embedders | None = None,
    ) -> None:
        self.db = db
        self.index: ChunkIndex = SerializedWrites(index, db)
        self.embedder = embedder  # the default, for new stores
        # Each store keeps the embedder it was built with (`loom.services.store_embedders`).
        self.embedders = embedders if embedders is not None else Embedders(None, default=embedder)
        self.poll_after_ms = poll_after_ms
        self.worker: Waker | None = None

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
        if is_expired(store):
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

    async def create_file(self, project: str, vector_store_id: str, body: dict[str, Any]) -> VectorStoreFile:
        req = parse(VectorStoreFileCreate, body)
        chunking = _chunking(req.chunking_strategy)
        async with self.db.write() as conn:
            await self._live_store(conn, project, vector_store_id)
            await require_files(conn, project, [req.file_id])
            obj = await attach_file(conn, project, vector_store_id, req.file_id, chunking, req.attributes)
        self._wake()
        return VectorStoreFileRecord(obj).to_wire()

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
        return page

    async def get_file(self, project: str, vector_store_id: str, file_id: str) -> VectorStoreFile:
        async with self.db.read() as conn:
            await self._store(conn, project, vector_store_id)
            obj = await store_files.get(conn, project, file_id, parent=vector_store_id)
        if obj is None:
            raise NotFound("vector store file", file_id)
        return VectorStoreFileRecord(obj).to_wire()

    async def update_file(
        self, project: str, vector_store_id: str, file_id: str, body: dict[str, Any]
    ) -> VectorStoreFile:
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
        return VectorStoreFileRecord(obj).to_wire()

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
        wire = dict(batch)
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
            "file_counts": count_statuses([]),
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
        request = SearchRequest.from_body(body)
        async with self.db.read() as conn:
            await self._live_store(conn, project, vector_store_id)
            names = await store_embedder_names(conn, [vector_store_id])
        results = await request.run(self.index, self.embedders.for_name(names.get(vector_store_id)), [vector_store_id])
        await self.touch(project, [vector_store_id])
        return request.page(results)

    async def search_for_run(
        self,
        project: str,
        store_ids: Sequence[str],
        queries: Sequence[str],
        *,
        max_num_results: int,
        score_threshold: float,
        ranker: str = "auto",
        wait_s: float = 60.0,
    ) -> builtins.list[SearchResult]:
        """File search inside a run: waits (bounded) for files still ingesting, then searches live stores."""
        live = await live_store_ids(self.db, project, store_ids)
        if not live:
            return []
        await self.wait_ready(live, wait_s)
        results = await search_stores(
            self.db,
            self.index,
            self.embedders,
            live,
            list(queries),
            max_num_results=max_num_results,
            score_threshold=score_threshold,
            ranker=ranker,
        )
        await self.touch(project, live)
        return results

    async def ingest_embedder(self, vector_store_id: str) -> Embedder:
        """The embedder for new chunks of this store (binds a store with no vector yet to the default)."""
        return await ingest_embedder(self.db, self.embedders, vector_store_id)

    async def wait_ready(self, store_ids: Sequence[str], timeout_s: float) -> None:
        await wait_ingested(self.db, store_ids, timeout_s, self._wake)
