"""The composition root: builds the database, stores, backends and services from `Settings`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from loom.config import Settings
from loom.jobs.ingest import IngestWorker
from loom.llm.routing import ModelRouter
from loom.retrieval.embedding import Embedders
from loom.retrieval.index import ChunkIndex
from loom.retrieval.isolate import ParseLimits
from loom.retrieval.pg_index import PostgresChunkIndex
from loom.retrieval.sqlite_index import SQLiteChunkIndex
from loom.runs.code_interpreter import CodeInterpreterTool
from loom.runs.code_sessions import LocalCodeSessions
from loom.runs.engine import RunEngine
from loom.runs.file_search import FileSearchTool
from loom.runs.live import LiveRuns
from loom.sandbox.manager import SandboxManager
from loom.sandbox.types import Sandbox, SandboxUnavailable
from loom.scaleout.affinity import SessionAffinity
from loom.services.assistants import AssistantService
from loom.services.files import FileService
from loom.services.keys import KeyRing
from loom.services.runs import RunService
from loom.services.threads import ThreadService
from loom.services.uploads import UploadService
from loom.services.vector_stores import VectorStoreService
from loom.store.blobstore import BlobStoreUnavailable, open_blob_storage
from loom.store.coordination import coordinator_for
from loom.store.db import Database
from loom.store.migrate import migrate
from loom.store.spool import Spool
from loom.supervisor import Supervisor
from loom.webhooks.delivery import DeliveryWorker, Policy
from loom.webhooks.service import WebhookService

log = logging.getLogger("loom")
_JANITOR_EVERY_S = 30.0
# Listing a whole store is not free: orphans are looked for every 10th pass (five minutes).
_ORPHAN_SWEEP_EVERY = 10


class LazySandbox:
    """The sandbox manager, started once: at boot when prewarming (in the background, so the API is up
    at once), else on first use. A failed start leaves the code interpreter unavailable, never unsandboxed."""

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.manager: SandboxManager | None = None
        self._starting: asyncio.Task[None] | None = None
        self.error: str | None = None

    def _ensure_started(self) -> asyncio.Task[None]:
        if self._starting is None:
            self._starting = asyncio.create_task(self._start(), name="loom-sandbox-start")
        return self._starting

    async def _start(self) -> None:
        try:
            manager = SandboxManager(self.settings, supervisor=self.supervisor)
            await manager.start()
            self.manager = manager
        except SandboxUnavailable as exc:
            self.error = exc.message
            log.warning("code interpreter unavailable: %s", exc.message)
        except Exception as exc:
            self.error = "the sandbox failed to start; see the server log"
            log.exception("code interpreter unavailable: %s", exc)

    async def start(self) -> None:
        if self.settings.sandbox_prewarm:
            self._ensure_started()

    async def session(self, key: str) -> Sandbox:
        await self._ensure_started()
        if self.manager is None:
            raise SandboxUnavailable(self.error or "the sandbox is not available")
        return await self.manager.session(key)

    def get(self, key: str) -> Sandbox | None:
        return self.manager.get(key) if self.manager is not None else None

    async def close_session(self, key: str) -> None:
        if self.manager is not None:
            await self.manager.close_session(key)

    async def aclose(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(BaseException):
                await self._starting
        if self.manager is not None:
            await self.manager.aclose()


def webhook_policy(settings: Settings) -> Policy:
    return Policy(
        concurrency=settings.webhooks_concurrency,
        timeout_s=settings.webhooks_timeout_s,
        retry_base_s=settings.webhooks_retry_base_s,
        retry_max_s=settings.webhooks_retry_max_s,
        retry_window_s=settings.webhooks_retry_window_s,
        poll_s=settings.webhooks_poll_s,
        allow_private=settings.webhooks_allow_private,
    )


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every background loop runs under it (see loom.supervisor).
        self.supervisor = Supervisor()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.effective_database_url)
        # Locks, notifications and single-process mode, as the database provides them.
        self.coordination = coordinator_for(self.db.engine)
        # Temporary files on this machine; file bytes in the store LOOM_BLOB_URL names (local or S3).
        self.spool = Spool(settings.files_dir / "tmp")
        self.blobs = open_blob_storage(settings.effective_blob_url, spool_dir=self.spool.root)
        self.keys = KeyRing(self.db, settings.api_keys)
        self.router = ModelRouter.from_settings(settings)
        self.assistants = AssistantService(self.db, settings)
        self.threads = ThreadService(self.db, concurrent_runs=settings.concurrent_runs)
        self.files = FileService(self.db, self.blobs, self.spool, settings.max_file_bytes)
        self.uploads = UploadService(
            self.db,
            self.files,
            settings.upload_expiry_s,
            lease_s=settings.lease_s,
            assembly_pause_s=settings.test_upload_assembly_pause_s,
            single_process=self.coordination.single_process,
        )
        self.engine = RunEngine(settings, self.db, self.router, self.blobs, self.coordination)
        # This replica's id (runs' leases, sandbox ownership, the `x-loom-replica` header).
        self.replica = self.engine.replica
        self.runs = RunService(self.db, self.engine, LiveRuns(self.engine.bus))
        # Vector stores and file search (retrieval library underneath; ingestion in the background).
        self.embedders = Embedders(settings)
        self.embedder = self.embedders.default
        self.engine.memory.embedder = self.embedder
        self.threads.on_delete.append(self.engine.memory.forget_thread)
        self.chunk_index = self.coordination.choose(sqlite=self._sqlite_index, postgresql=self._postgres_index)
        self.vector_stores = VectorStoreService(
            self.db, self.chunk_index, self.embedder, settings.poll_after_ms, self.embedders
        )
        self.ingest = IngestWorker(
            self.db,
            self.coordination,
            self.vector_stores,
            self.blobs,
            concurrency=settings.ingest_concurrency,
            janitor_s=settings.vector_store_janitor_s,
            limits=ParseLimits(settings.ingest_memory_mb, settings.ingest_timeout_s),
        )
        self.files.delete_hooks.append(self.vector_stores.forget_file)
        self.engine.register_tool(FileSearchTool(self.vector_stores))
        self.sandbox = LazySandbox(settings, self.supervisor)
        # The code interpreter reads input Files and writes output Files through the file service.
        self.code_sessions = LocalCodeSessions(self.sandbox, self.files, self.files)
        # A thread's session has one owner replica; runs elsewhere send their code there (loom.scaleout).
        self.affinity = SessionAffinity(
            self.code_sessions,
            self.db,
            settings,
            self.engine.replica,
            single_process=self.coordination.single_process,
        )
        self.engine.register_tool(CodeInterpreterTool(self.affinity, self.db, settings))
        self.threads.on_delete.append(self.sandbox.close_session)
        self.threads.on_delete.append(self.affinity.forget)
        self.webhooks = WebhookService(self.db, allow_private=settings.webhooks_allow_private)
        self.webhook_worker = DeliveryWorker(self.db, webhook_policy(settings))

    def _sqlite_index(self) -> ChunkIndex:
        return SQLiteChunkIndex(self.db.engine)

    def _postgres_index(self) -> ChunkIndex:
        return PostgresChunkIndex(
            self.db.engine, self.embedder.dimensions, keyword_cache_bytes=self.settings.keyword_cache_mb * 1024 * 1024
        )

    async def start(self) -> None:
        await migrate(self.db.engine)
        self.spool.clean()
        await self.engine.start(self.supervisor)
        await self.ingest.start(self.supervisor)
        await self.sandbox.start()
        if not self.coordination.single_process:
            self.supervisor.start("loom-sandbox-owners", self.affinity.renew_loop)
        self.supervisor.start("loom-janitor", self._janitor)
        self.supervisor.start("loom-webhooks", self.webhook_worker.run)

    def begin_drain(self) -> None:
        """SIGTERM: take no new runs (503, retried by clients elsewhere) and hand the executing ones over
        (`RunEngine.begin_drain`); `stop` then waits for the rest."""
        self.engine.begin_drain(self.settings.drain_timeout_s)
        self.affinity.draining = True

    async def stop(self) -> None:
        self.begin_drain()
        await self.engine.drain(self.settings.drain_timeout_s)
        with contextlib.suppress(Exception):  # (a database already gone: the leases lapse by themselves)
            await self.affinity.release()
        await self.supervisor.stop()
        await self.webhook_worker.aclose()
        await self.ingest.stop()
        await self.engine.stop()
        await self.coordination.close()
        await self.affinity.aclose()
        await self.sandbox.aclose()
        await self.router.aclose()
        await self.blobs.aclose()
        await self.db.dispose()

    async def _janitor(self) -> None:
        """Expire what has a deadline: files past `expires_at`, uploads past their hour (and roll back
        upload completions a dead process left); remove stored objects no row names (left by a crash
        between a put and its row) once they are an hour old. The first pass runs at start-up (and after
        a restart by the supervisor). A store that is down skips the orphans until the next pass."""
        passes = 0
        while True:
            await self.files.delete_expired()
            await self.uploads.expire_uploads()
            if passes % _ORPHAN_SWEEP_EVERY == 0:
                try:
                    await self.files.sweep_orphans()
                except BlobStoreUnavailable as exc:
                    log.warning("orphan objects not swept this time: %s", exc)
            passes += 1
            await asyncio.sleep(_JANITOR_EVERY_S)
