"""The run engine of one replica: starts executors, keeps their leases, recovers what others left behind.

Runs execute as asyncio tasks in the replica that received the request advancing them (create,
submit tool outputs). Each executing run holds a lease in its row, renewed while it works; a run
whose lease lapsed (its process died) is failed with `server_error` by whichever replica notices.
A run still executing at its `expires_at` (`run_max_duration_s` after it was created or resumed) is
stopped and ends `expired`; the sweep expires such runs whose executor is gone or stuck.
A cancel asked on one replica reaches the executing one through the database's notifications
(`loom.store.coordination`: `NOTIFY` on PostgreSQL).

A draining replica (SIGTERM) hands its executing runs over: each stops at its next turn boundary (the
model call or tool round in flight finishes here), or, at the drain timeout, at once (the interrupted
turn's open step and message closed); it stays `in_progress` with its lease on offer (`RunStore.hand_over`),
and another replica takes it over (told at once by a notification; its sweep finds any it missed) and
goes on from the last committed turn. A replica that died mid-run (its lease lapsed) left a turn whose
effects are unknown (a tool may have run, a half answer was streamed): its runs still fail, as OpenAI's did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from loom.config import Settings
from loom.errors import ServiceUnavailable
from loom.llm.routing import ModelRouter
from loom.memory.service import MemoryService
from loom.ops import metrics
from loom.records import RunRecord
from loom.runs.bus import EventBus
from loom.runs.context import FileReader
from loom.runs.executor import RunExecutor
from loom.runs.store import HANDED_OVER, Preloaded, RunStore
from loom.runs.sweeps import RunSweeps
from loom.runs.tools import ServerTool
from loom.store import tables
from loom.store.blobstore import BlobStorage
from loom.store.collections import files as files_collection
from loom.store.coordination import Coordinator
from loom.store.db import Database
from loom.supervisor import Supervisor

log = logging.getLogger("loom.runs")
_CHANNEL = "loom_run_control"
# Runs handed over by a draining replica, for the others to take over (the payload: project and run id).
_HANDOVER_CHANNEL = "loom_run_handover"
# Once the drain timeout interrupted the runs still executing here, how long their handovers may take.
_HANDOVER_GRACE_S = 5.0
# The shortest polling hint given to clients (ms).
_MIN_POLL_MS = 5


class RunEngine:
    def __init__(
        self, settings: Settings, db: Database, router: ModelRouter, blobs: BlobStorage, coordination: Coordinator
    ) -> None:
        self.settings = settings
        self.db = db
        self.coordination = coordination
        self.router = router
        self.blobs = blobs
        self.store = RunStore(db)
        # Memory strategies (loom.memory); the container hands it the embedder file search uses.
        self.memory = MemoryService(db)
        self.bus = EventBus()
        self.replica = "replica_" + secrets.token_hex(6)
        self.executors: dict[str, RunExecutor] = {}
        # When each run executing here last started (monotonic), for polling hints.
        self._running_since: dict[str, float] = {}
        self.server_tools: dict[str, ServerTool] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._local: dict[str, asyncio.Task[None]] = {}
        # Cancels asked for runs whose task here has not registered its executor yet.
        self._cancel_pending: set[str] = set()
        self._background: list[asyncio.Task[None]] = []
        self.sweeps = RunSweeps(
            db, self.store, self.bus, settings, executing=lambda run_id: run_id in self.executors, here=self.runs_here
        )
        # Set on SIGTERM (`begin_drain`): no new run starts here; those executing are handed over.
        self.draining = False
        # When the drain's timeout is up (the loop's clock), once it began.
        self._drain_deadline: float | None = None

    def register_tool(self, tool: ServerTool) -> None:
        self.server_tools[tool.type] = tool

    def server_tools_for(self, tools: list[dict[str, Any]]) -> dict[str, tuple[ServerTool, dict[str, Any]]]:
        """The run's tools Loom executes itself, by the function name the model sees."""
        found: dict[str, tuple[ServerTool, dict[str, Any]]] = {}
        for tool in tools:
            impl = self.server_tools.get(tool["type"])
            if impl is not None:
                found[impl.function_name] = (impl, tool)
        return found

    def file_reader(self, project: str) -> FileReader:
        async def read(file_id: str) -> tuple[str, bytes] | None:
            async with self.db.read() as conn:
                row = await files_collection.get_row(conn, project, file_id)
            if row is None:
                return None
            async with await self.blobs.open(str(row.path)) as reader:
                return str(row.data["filename"]), b"".join([chunk async for chunk in reader])

        return read

    # Life cycle.

    async def start(self, supervisor: Supervisor) -> None:
        if self.coordination.single_process:
            # One process owns the database (SQLite): whatever was running when it stopped is orphaned now.
            await self.sweeps.recover(orphans_only=False)
        self._background.append(supervisor.start("loom-run-sweeper", self._sweeper))
        await self.coordination.listen(_CHANNEL, self._on_cancel_notice)
        await self.coordination.listen(_HANDOVER_CHANNEL, self._on_handover_notice)

    def refuse_if_draining(self) -> None:
        """A request that would start (or resume) a run here while this replica drains: 503, which clients
        retry (the balancer sends the retry to another replica)."""
        if self.draining:
            raise ServiceUnavailable("The server is overloaded or not ready yet.")

    def begin_drain(self, timeout_s: float) -> None:
        """SIGTERM: take no new runs; each run executing here goes on elsewhere from its next turn
        boundary, and those still executing `timeout_s` from now are interrupted and handed over.
        (Called from a signal handler: it sets the flag and schedules the rest on the loop.)"""
        if self.draining and self._drain_deadline is not None:
            return
        self.draining = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet: nothing executes, nothing to hand over
            return
        self._drain_deadline = loop.time() + timeout_s
        loop.call_soon_threadsafe(self._start_handovers, timeout_s)

    def _start_handovers(self, timeout_s: float) -> None:
        for executor in self.executors.values():
            executor.hand_over()
        asyncio.get_running_loop().call_later(timeout_s, self._interrupt_for_handover)

    def _interrupt_for_handover(self) -> None:
        for executor in self.executors.values():
            executor.interrupt_for_handover()

    async def drain(self, timeout_s: float) -> None:
        """Stop taking runs and wait until those executing here end, reach `requires_action` or are handed
        over (`begin_drain`): up to `timeout_s` after the drain began, and a little more for the handovers
        the timeout made. Any still executing then are stopped by `stop`: their leases lapse and another
        replica's sweep fails them (`RunSweeps.recover`)."""
        self.begin_drain(timeout_s)
        running = [t for t in self._tasks if not t.done()]
        if not running:
            return
        assert self._drain_deadline is not None
        left = max(self._drain_deadline - asyncio.get_running_loop().time(), 0.0)
        log.info("draining: handing over %d run(s) executing here, within %gs", len(running), left)
        await asyncio.wait(running, timeout=left + _HANDOVER_GRACE_S)

    async def stop(self) -> None:
        for task in [*self._background, *self._tasks]:
            task.cancel()
        for task in [*self._background, *self._tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # Executing.

    def start_run(
        self,
        project: str,
        run_id: str,
        run: dict[str, Any] | None = None,
        *,
        claimed: RunRecord | None = None,
        preloaded: Preloaded | None = None,
        take_over: bool = False,
    ) -> None:
        """Execute a run here: a queued one (`run` as just committed lets the first reads overlap the
        claim), or `claimed`, one committed `in_progress` and leased to this replica already, with
        what its first model call needs when the creating transaction read it (`preloaded`), or
        (`take_over`) one a draining replica handed over."""
        task = asyncio.create_task(
            self._execute(project, run_id, run, claimed, preloaded, take_over), name=f"run-{run_id}"
        )
        self._tasks.add(task)
        self._local[run_id] = task
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._local.pop(run_id, None))

    def runs_here(self, run_id: str) -> bool:
        """Whether this replica is starting or executing the run (so its events are published here)."""
        return run_id in self._local

    async def _execute(
        self,
        project: str,
        run_id: str,
        hint: dict[str, Any] | None = None,
        preclaimed: RunRecord | None = None,
        preloaded: Preloaded | None = None,
        take_over: bool = False,
    ) -> None:
        lease_s = self.settings.lease_s
        preload: asyncio.Future[Preloaded] | None = None
        claimed: RunRecord | None
        if preclaimed is not None:
            claimed = preclaimed
            if preloaded is not None:
                preload = asyncio.get_running_loop().create_future()
                preload.set_result(preloaded)
        elif take_over:
            claimed = await self.store.take_over(project, run_id, self.replica, time.time() + lease_s)
            if claimed is not None:
                log.info("run %s: taken over from a draining replica", run_id)
        else:
            preload = asyncio.create_task(self.store.preload(project, hint)) if hint is not None else None
            claimed = await self.store.claim(project, run_id, self.replica, time.time(), time.time() + lease_s)
        cancel_asked = run_id in self._cancel_pending
        self._cancel_pending.discard(run_id)
        if claimed is None:
            if preload is not None:
                preload.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await preload
            if cancel_asked:
                await self._cancel_here(project, run_id)
            self.bus.end(run_id)
            return
        executor = RunExecutor(self, project, run_id, preload)
        self.executors[run_id] = executor
        self._running_since[run_id] = time.monotonic()
        if cancel_asked:
            executor.cancel()
        if self.draining:  # claimed as the drain began: it goes on elsewhere from its first boundary
            executor.hand_over()
        renewer = asyncio.create_task(self._renew(executor))
        # The run ends at `expires_at` (LOOM_RUN_MAX_DURATION_S after it was created or resumed).
        expires_at = claimed.data.get("expires_at")
        deadline = (
            asyncio.get_running_loop().call_later(max(expires_at - time.time(), 0.0), executor.expire)
            if expires_at is not None
            else None
        )
        try:
            await executor.execute(claimed)
        finally:
            if deadline is not None:
                deadline.cancel()
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self.executors.pop(run_id, None)
            metrics.RUN_DURATION.observe(time.monotonic() - self._running_since.pop(run_id, time.monotonic()))
            if not executor.lease_cleared:  # one write less per run when it ended normally
                await self._release(run_id)
            self.bus.end(run_id)
            if executor.handed_over:
                log.info("run %s: handed over (this replica drains)", run_id)
                with contextlib.suppress(Exception):  # (the others' sweeps find it anyway)
                    await self.coordination.notify(_HANDOVER_CHANNEL, json.dumps([project, run_id]))

    async def _renew(self, executor: RunExecutor) -> None:
        every = max(self.settings.lease_s / 3, 0.2)
        while True:
            await asyncio.sleep(every)
            state = await self.store.renew(executor.run_id, self.replica, time.time() + self.settings.lease_s)
            if state == "cancelling" and not executor.cancel_requested:
                executor.cancel()
            if state is None and not executor.expired:
                # The lease is gone: another replica's sweep may have expired the run (`RunSweeps.expire_overdue`).
                run = await self.store.get_run(executor.project, executor.run_id)
                if run is not None and run["status"] == "expired":
                    executor.expire()

    def poll_after_ms(self, run: Mapping[str, Any]) -> int:
        """The `openai-poll-after-ms` hint for a run: short while it is young, so `create_and_poll`
        sees a quick run finish promptly, growing with its age up to `poll_after_ms` (a quarter of
        the time it has run so far: a long run is polled a few times per doubling of its age)."""
        ceiling = self.settings.poll_after_ms
        if not self.runs_here(run["id"]):
            return ceiling
        since = self._running_since.get(run["id"])
        if since is None:
            return min(ceiling, _MIN_POLL_MS)
        age_ms = (time.monotonic() - since) * 1000
        return int(min(ceiling, max(_MIN_POLL_MS, age_ms / 4)))

    async def _release(self, run_id: str) -> None:
        """Give up the lease of a run whose executor stopped without ending it (shutdown, a bug): the
        lease is left lapsed, not cleared, so the recovery sweep of any replica fails the run instead
        of leaving it active forever."""
        t = tables.runs
        with contextlib.suppress(Exception):
            async with self.db.write() as conn:
                await conn.execute(
                    t.update()
                    .where(t.c.id == run_id, t.c.lease_owner == self.replica)
                    .values(lease_owner=None, lease_expires_at=0.0)
                )

    # Cancelling.

    async def request_cancel(self, project: str, run_id: str) -> dict[str, Any] | None:
        """`POST …/cancel`: queued/in-progress runs go to `cancelling` and their executor stops;
        a run waiting for tool outputs has no executor, so it is cancelled at once."""
        run = await self.store.transition(
            project, run_id, "cancelling", allowed_from={"queued", "in_progress", "requires_action"}
        )
        if run is None:
            return None
        self.bus.publish(run_id, "thread.run.cancelling", dict(run))
        executor = self.executors.get(run_id)
        if executor is not None:
            executor.cancel()
        elif run_id in self._local:
            # Its task is claiming it right now: the task finishes the cancel, whichever way the claim goes.
            self._cancel_pending.add(run_id)
        elif await self._leased_elsewhere(run_id):
            # The replica executing it hears of it (its lease renewal would notice too, later).
            await self.coordination.notify(_CHANNEL, run_id)
        else:
            await self._cancel_here(project, run_id)
        return run

    async def _leased_elsewhere(self, run_id: str) -> bool:
        t = tables.runs
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(t.c.lease_owner, t.c.lease_expires_at).where(t.c.id == run_id))).first()
        return row is not None and row[0] not in (None, self.replica) and (row[1] or 0) > time.time()

    async def _cancel_here(self, project: str, run_id: str) -> None:
        """Finish a cancel for a run no live executor holds: close its open steps and messages."""
        await self.sweeps.close_leftovers(project, run_id, step_status="cancelled", reason="run_cancelled", error=None)
        run = await self.store.transition(project, run_id, "cancelled", allowed_from={"cancelling"})
        if run is not None:
            self.bus.publish(run_id, "thread.run.cancelled", dict(run))
        self.bus.end(run_id)

    def _on_cancel_notice(self, run_id: str) -> None:
        """A cancel asked on another replica for a run that may execute here."""
        executor = self.executors.get(run_id)
        if executor is not None:
            executor.cancel()

    # Handovers.

    def _on_handover_notice(self, payload: str) -> None:
        """A draining replica handed a run over: go on with it here (if no other replica is quicker)."""
        if self.draining:
            return
        try:
            project, run_id = json.loads(payload)
        except ValueError:
            log.warning("ignored a malformed handover notice: %r", payload)
            return
        if run_id not in self._local:
            self.start_run(str(project), str(run_id), take_over=True)

    async def take_over_handed(self) -> int:
        """Take over the runs draining replicas handed over that no replica took yet (a notice missed,
        or none was running then: on SQLite, the runs a drain handed over before the restart)."""
        if self.draining:
            return 0
        t = tables.runs
        query = sa.select(t.c.id, t.c.project).where(t.c.status == "in_progress", t.c.lease_owner == HANDED_OVER)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        count = 0
        for run_id, project in rows:
            if run_id not in self._local and not self.draining:
                self.start_run(project, run_id, take_over=True)
                count += 1
        return count

    # Recovery and expiry.

    async def _sweeper(self) -> None:
        every = max(min(self.settings.lease_s / 2, 5.0), 0.5)
        while True:  # supervised: a failed pass ends the loop, logged, and the supervisor restarts it
            await self.sweeps.expire_overdue()
            await self.take_over_handed()
            await self.sweeps.recover(orphans_only=True)
            await self.sweeps.expire_waiting()
            await asyncio.sleep(every)
