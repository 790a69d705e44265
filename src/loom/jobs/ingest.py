"""Background ingestion of vector store files: the job queue is the `in_progress` file rows.

A file row is born `in_progress`; the `IngestWorker` of every process sweeps for such rows (woken at
once by the API, and every half second anyway, which also picks up files attached by thread/assistant
helpers and files left behind by a killed process). A named lock per file (`loom.store.coordination`:
a session advisory lock on PostgreSQL) makes exactly one replica ingest it; the lock dies with its
connection, so a killed replica's files are taken over by the next sweep elsewhere. Each claim counts an attempt: a file that was interrupted
`MAX_ATTEMPTS` times (say it crashes the process) fails with `server_error` instead of looping.
Parsing and chunking run in a child process with a memory and a time limit (`loom.retrieval.isolate`),
so a hostile file fails alone; embedding runs in threads, never on the event loop, one batch of chunks
at a time. The same worker runs the vector store expiry janitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from loom.ops import metrics
from loom.records import VectorStoreFileRecord, VectorStoreFileState
from loom.retrieval.chunking import AUTO, ChunkingStrategy
from loom.retrieval.errors import FileProcessingError
from loom.retrieval.ingest import ingest_file
from loom.retrieval.isolate import ParseLimits, close_host
from loom.services.vector_store_rows import add_usage, store_files
from loom.services.vector_stores import VectorStoreService
from loom.store import tables
from loom.store.blobstore import BlobStorage
from loom.store.coordination import Coordinator
from loom.store.db import Database
from loom.supervisor import Supervisor
from loom.webhooks import outbox

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def _strategy_from_wire(wire: Mapping[str, Any] | None) -> ChunkingStrategy:
    static = (wire or {}).get("static")
    if not static:
        return AUTO
    return ChunkingStrategy(int(static["max_chunk_size_tokens"]), int(static["chunk_overlap_tokens"]))


class IngestWorker:
    """Finds `in_progress` vector store files and ingests them, a few at a time, off the event loop."""

    def __init__(
        self,
        db: Database,
        coordination: Coordinator,
        service: VectorStoreService,
        blobs: BlobStorage,
        *,
        concurrency: int = 2,
        poll_s: float = 0.5,
        janitor_s: float = 60.0,
        limits: ParseLimits | None = None,
    ) -> None:
        self.db = db
        self.coordination = coordination
        self.limits = limits or ParseLimits()
        self.service = service
        self.blobs = blobs  # where the Files' bytes are (their keys are in the file rows)
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
        # One replica per file. The name (store id/file id) keeps the advisory key earlier versions
        # took, so replicas of both exclude each other during a rolling upgrade.
        async with self.coordination.try_lock(f"{store_id}/{file_id}") as got:
            if got:
                await self._ingest(project, store_id, file_id)

    async def _claim(
        self, project: str, store_id: str, file_id: str
    ) -> tuple[dict[str, Any], tuple[str, str] | None] | None:
        """Count an attempt on a file still `in_progress` (None when it is not, or has had too many
        attempts: then it fails); the file row's wire object and the File's name and blob key (None if
        it is gone)."""
        async with self.db.write() as conn:
            row = await store_files.get_row(conn, project, file_id, parent=store_id, lock=True)
            if row is None or row.status != "in_progress":
                return None
            record = VectorStoreFileRecord.from_row(row)
            obj, attempts = record.data, record.state.attempts
            if attempts >= MAX_ATTEMPTS:
                obj.update(
                    status="failed",
                    last_error={"code": "server_error", "message": "Indexing was interrupted too many times."},
                )
                await store_files.replace(conn, project, obj, parent=store_id, status="failed", state=None)
                await outbox.record_file(conn, project, obj, row.batch_id)
                return None
            attempt = VectorStoreFileState(attempts=attempts + 1)
            await store_files.replace(conn, project, obj, parent=store_id, state=attempt.to_json())
            file_row = (
                await conn.execute(
                    sa.select(tables.files.c.data, tables.files.c.path).where(
                        tables.files.c.id == file_id, tables.files.c.project == project
                    )
                )
            ).first()
            return obj, ((str(dict(file_row[0])["filename"]), str(file_row[1])) if file_row is not None else None)

    async def _ingest(self, project: str, store_id: str, file_id: str) -> None:
        claimed = await self._claim(project, store_id, file_id)
        if claimed is None:
            return
        obj, stored = claimed
        index = self.service.index
        error: dict[str, str] | None = None
        usage = 0
        try:
            if stored is None:
                raise FileProcessingError("The file no longer exists.")
            filename, key = stored
            # The bytes as a file on this machine (spooled from object storage, in chunks off the loop).
            async with self.blobs.local_file(key) as path:
                result = await ingest_file(
                    index,
                    await self.service.ingest_embedder(store_id),
                    vector_store_id=store_id,
                    file_id=file_id,
                    filename=filename,
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
                if error is None:
                    done.update(status="completed", usage_bytes=usage, last_error=None)
                else:
                    done.update(status="failed", usage_bytes=0, last_error=error)
                await store_files.replace(conn, project, done, parent=store_id, status=done["status"], state=None)
                await outbox.record_file(conn, project, done, row.batch_id)
                if error is None:
                    await add_usage(conn, project, store_id, usage)
        metrics.INGEST_OUTCOMES.labels("completed" if error is None else "failed").inc()
        if not keep:
            # Detached, cancelled or failed meanwhile: no chunks of it may stay searchable.
            still_attached = row is not None and row.status == "completed"
            if not still_attached:
                await index.delete_file(store_id, file_id)
