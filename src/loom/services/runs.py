"""Runs and run steps: the API's rules (active-run checks, tool output validation); execution is the engine's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import sqlalchemy as sa

from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.records import FILE_SEARCH_CONTENT, Run, RunRecord, RunState, RunStep, RunStepRecord
from loom.runs import status
from loom.runs.bus import END, SETTLED
from loom.runs.bus import RunEvents as RunEvents  # the routes' view of a run's events
from loom.runs.engine import RunEngine
from loom.runs.live import LiveRuns
from loom.runs.objects import new_run
from loom.runs.options import check_limits, concurrent_runs, run_limit_s
from loom.runs.status import TERMINAL
from loom.runs.store import Preloaded, RunStore
from loom.schemas.runs import RunCreate, RunModify, SubmitToolOutputs, ThreadAndRunCreate
from loom.schemas.threads import ThreadCreate
from loom.services.common import ListParams, active_run, active_runs
from loom.services.threads import create_thread_row, insert_message
from loom.store import tables
from loom.store.collections import assistants, run_steps, runs, threads
from loom.store.db import Database
from loom.store.repo import Page

# A poll from an SDK helper waits at most this long for the run to settle before answering.
LONG_POLL_S = 2.0


def check_include(include: list[str]) -> list[str]:
    for value in include:
        if value != FILE_SEARCH_CONTENT:
            raise InvalidRequest(
                f"Invalid value: '{value}'. Supported values are: '{FILE_SEARCH_CONTENT}'.",
                param="include",
                code="invalid_value",
            )
    return include


class RunService:
    def __init__(self, db: Database, engine: RunEngine, live: LiveRuns | None = None) -> None:
        self.db = db
        self.engine = engine
        # What each run executing here has said so far, for watchers joining mid-run (`events`).
        self.live = live

    def _lease(self) -> dict[str, Any]:
        """A new run, or one queued again by its tool outputs, is leased to this replica from that commit:
        if the process dies before the executor starts, the lease lapses and another replica fails the
        run (never stuck `queued`)."""
        return {"lease_owner": self.engine.replica, "lease_expires_at": time.time() + self.engine.settings.lease_s}

    def _events(self, run_id: str) -> RunEvents:
        return RunEvents(self.engine.bus, run_id, idle_s=self.engine.settings.sse_keepalive_s)

    def _start(
        self,
        project: str,
        run: dict[str, Any],
        first: list[tuple[str, Any]] | None,
        *,
        claimed: RunRecord | None = None,
        preloaded: Preloaded | None = None,
    ) -> RunEvents | None:
        """Start executing the run; with `first` (a streaming request), its events from now on, after
        those (what the request already did: `thread.run.created`, …)."""
        events = None
        if first is not None:
            events = self._events(run["id"])
            for name, data in first:
                events.announce(name, data)
        self.engine.start_run(project, run["id"], run, claimed=claimed, preloaded=preloaded)
        return events

    async def events(self, project: str, thread_id: str, run_id: str) -> RunEvents:
        """A run's events for a watcher, until it settles. A run executing here starts with its snapshot
        (`loom.runs.live`: the run, then each step and message of this execution as last announced with
        the deltas since), then its live events, none missing and none twice. A run executing elsewhere
        (or no longer executing) gives its current state (`thread.run.<status>`) and ends."""
        events = self._events(run_id)
        try:
            run = await self.get(project, thread_id, run_id)  # another project's ids: 404
        except BaseException:
            events.close()
            raise
        snapshot = self.live.snapshot(run_id) if self.live is not None else None
        if snapshot is not None:
            # Taken without an await after the subscription's events: it covers them.
            events.drop_received()
            for name, data in snapshot:
                events.announce(name, data)
            return events
        status = run["status"]
        events.announce(f"thread.run.{status}", run)
        if status in TERMINAL or status == "requires_action" or not self.engine.runs_here(run_id):
            events.end()
        return events

    def poll_after_ms(self, run: Mapping[str, Any]) -> int:
        """The `openai-poll-after-ms` hint for a run (shorter while it is young and executing here)."""
        return self.engine.poll_after_ms(run)

    async def _insert_started(
        self, conn: Any, project: str, run: dict[str, Any], state: RunState
    ) -> tuple[Run, RunRecord]:
        """Insert a new run already claimed by this replica and `in_progress`, in the creating
        transaction: `queued` is a status it passes through, so its events (`created`, `queued`, then
        `in_progress`) all follow this one commit, and the run needs no second transaction to start.
        Returns the run as created (`queued`, what the API answers) and as stored."""
        created = RunRecord(dict(run)).to_wire()
        started = RunRecord(status.apply(run, "in_progress"), state)
        await runs.insert(
            conn,
            project,
            started.data,
            thread_id=run["thread_id"],
            status=started.status,
            expires_at=run["expires_at"],
            state=state.to_json(),
            **self._lease(),
        )
        return created, started

    async def create(
        self, project: str, thread_id: str, req: RunCreate, include: list[str]
    ) -> tuple[Run, RunEvents | None]:
        """The run as created, and (with `stream`) its events, from `thread.run.created`."""
        self.engine.refuse_if_draining()
        async with self.db.write() as conn:
            thread = await threads.get_row(conn, project, thread_id, lock=True)
            if thread is None:
                raise NotFound("thread", thread_id)
            assistant = await assistants.get(conn, project, req.assistant_id)
            if assistant is None:
                raise NotFound("assistant", req.assistant_id)
            settings = self.engine.settings
            concurrent = concurrent_runs(settings.concurrent_runs, thread.data)
            if not concurrent:
                running = await active_run(conn, thread_id)
                if running is not None:
                    raise InvalidRequest(f"Thread {thread_id} already has an active run {running}.")
            check_limits(settings, req.metadata)
            self.engine.router.resolve(req.model or assistant["model"])
            for message in req.additional_messages or []:
                await insert_message(conn, project, thread_id, message)
            limit = run_limit_s({"metadata": req.metadata}, assistant)
            state = RunState(include=tuple(include), max_run_s=limit)
            if concurrent:
                # Several runs at once: this one sees the thread as it is now (`RunState.history_seq`).
                view = await RunStore.history_view(conn, thread_id, await active_runs(conn, thread_id))
                state = replace(state, history_seq=view.history_seq, siblings=view.siblings)
            run = new_run(thread_id, assistant, req, limit or settings.run_max_duration_s)
            created, started = await self._insert_started(conn, project, run, state)
            # The executor's first reads, done here: this transaction has the assistant and thread.
            preloaded = (assistant, dict(thread.data), await RunStore.new_run_context(conn, started.data, state))
        first = [("thread.run.created", created), ("thread.run.queued", created)] if req.stream else None
        return created, self._start(project, started.data, first, claimed=started, preloaded=preloaded)

    async def create_thread_and_run(
        self, project: str, req: ThreadAndRunCreate
    ) -> tuple[dict[str, Any], Run, RunEvents | None]:
        """The thread, the run as created, and (with `stream`) its events, from `thread.created`."""
        self.engine.refuse_if_draining()
        async with self.db.write() as conn:
            assistant = await assistants.get(conn, project, req.assistant_id)
            if assistant is None:
                raise NotFound("assistant", req.assistant_id)
            self.engine.router.resolve(req.model or assistant["model"])
            settings = self.engine.settings
            check_limits(settings, req.metadata)
            # The thread as stored after its messages (whose attachments may have made its store).
            thread = await create_thread_row(conn, project, req.thread or ThreadCreate(), req.tool_resources)
            limit = run_limit_s({"metadata": req.metadata}, assistant)
            run = new_run(thread["id"], assistant, req, limit or settings.run_max_duration_s)
            state = RunState(max_run_s=limit)
            if concurrent_runs(settings.concurrent_runs, thread):
                view = await RunStore.history_view(conn, thread["id"], [])
                state = replace(state, history_seq=view.history_seq)
            created, started = await self._insert_started(conn, project, run, state)
            preloaded = (assistant, dict(thread), await RunStore.new_run_context(conn, started.data, state))
        first = None
        if req.stream:
            first = [("thread.created", thread), ("thread.run.created", created), ("thread.run.queued", created)]
        return thread, created, self._start(project, started.data, first, claimed=started, preloaded=preloaded)

    async def _thread_run(self, conn: Any, project: str, thread_id: str, run_id: str) -> dict[str, Any]:
        if await threads.get_row(conn, project, thread_id) is None:
            raise NotFound("thread", thread_id)
        run = await runs.get(conn, project, run_id, parent=thread_id)
        if run is None:
            raise NotFound("run", run_id)
        return run

    async def _thread_run_row(self, conn: Any, project: str, thread_id: str, run_id: str) -> Any:
        """The run's whole row (with its `state`)."""
        if await threads.get_row(conn, project, thread_id) is None:
            raise NotFound("thread", thread_id)
        row = await runs.get_row(conn, project, run_id, parent=thread_id)
        if row is None:
            raise NotFound("run", run_id)
        return row

    async def get(self, project: str, thread_id: str, run_id: str) -> Run:
        async with self.db.read() as conn:
            return RunRecord(await self._thread_run(conn, project, thread_id, run_id)).to_wire()

    async def poll(self, project: str, thread_id: str, run_id: str, wait_s: float = LONG_POLL_S) -> Run:
        """`GET` a run for an SDK poll helper: while the run is active and executing in this replica,
        answer when it settles (or after `wait_s`), so `create_and_poll` returns as soon as the run
        ends instead of after a whole polling interval. Other replicas' runs answer at once."""
        if not self.engine.runs_here(run_id):
            return await self.get(project, thread_id, run_id)
        queue = self.engine.bus.subscribe(run_id)
        try:
            run = await self.get(project, thread_id, run_id)
            if run["status"] not in ("queued", "in_progress", "cancelling"):
                return run
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while (remaining := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if event is END or event.name in SETTLED:
                    break
            return await self.get(project, thread_id, run_id)
        finally:
            self.engine.bus.unsubscribe(run_id, queue)

    async def list_runs(self, project: str, thread_id: str, params: ListParams) -> Page:
        async with self.db.read() as conn:
            if await threads.get_row(conn, project, thread_id) is None:
                raise NotFound("thread", thread_id)
            page = await runs.list(
                conn,
                project,
                params,
                parent=thread_id,
            )
        return page

    async def modify(self, project: str, thread_id: str, run_id: str, req: RunModify) -> Run:
        async with self.db.write() as conn:
            run = await self._thread_run(conn, project, thread_id, run_id)
            if req.metadata is not None:
                check_limits(self.engine.settings, req.metadata)
                run["metadata"] = dict(req.metadata)
                await runs.replace(conn, project, run)
        return RunRecord(run).to_wire()

    async def cancel(self, project: str, thread_id: str, run_id: str) -> Run:
        async with self.db.read() as conn:
            run = await self._thread_run(conn, project, thread_id, run_id)
        if run["status"] in TERMINAL or run["status"] == "cancelling":
            raise InvalidRequest(f"Cannot cancel run with status '{run['status']}'.")
        cancelled = await self.engine.request_cancel(project, run_id)
        if cancelled is None:
            current = await self.get(project, thread_id, run_id)
            raise InvalidRequest(f"Cannot cancel run with status '{current['status']}'.")
        return RunRecord(cancelled).to_wire()

    async def submit_tool_outputs(
        self, project: str, thread_id: str, run_id: str, req: SubmitToolOutputs
    ) -> tuple[RunStep, Run, RunEvents | None]:
        """The completed tool-call step, the run queued again, and (with `stream`) its events, from
        `thread.run.step.completed`."""
        self.engine.refuse_if_draining()
        async with self.db.write() as conn:
            row = await self._thread_run_row(conn, project, thread_id, run_id)
            run = RunRecord.from_row(row)
            if run.status != "requires_action":
                raise InvalidRequest(f'Runs in status "{run.status}" do not accept tool outputs.')
            pending = [c["id"] for c in run.data["required_action"]["submit_tool_outputs"]["tool_calls"]]
            given: dict[str, str] = {}
            for i, out in enumerate(req.tool_outputs):
                if out.tool_call_id is None:
                    raise InvalidRequest(
                        f"Missing required parameter: 'tool_outputs[{i}].tool_call_id'.",
                        param=f"tool_outputs[{i}].tool_call_id",
                        code="missing_required_parameter",
                    )
                if out.tool_call_id not in pending:
                    raise InvalidRequest(
                        f"Invalid 'tool_outputs[{i}].tool_call_id': no pending tool call with id '{out.tool_call_id}'.",
                        param=f"tool_outputs[{i}].tool_call_id",
                        code="invalid_value",
                    )
                given[out.tool_call_id] = out.output or ""
            missing = [c for c in pending if c not in given]
            if missing:
                raise InvalidRequest(
                    f"Expected tool outputs for call_ids {pending}, got {list(given)}. Missing: {missing}.",
                    param="tool_outputs",
                    code="invalid_value",
                )
            pending_step = await self._pending_step(conn, run_id)
            step, calls = pending_step.data, pending_step.state
            for call in step["step_details"]["tool_calls"]:
                if call["type"] == "function" and call["id"] in given:
                    call["function"]["output"] = given[call["id"]]
                    calls = calls.with_output(call["id"], given[call["id"]])
            step.update(status="completed", completed_at=now())
            await run_steps.replace(conn, project, step, state=calls.to_json())
        # The resumed run has the whole maximum run duration again (its own, or the server's).
        queued = await self.engine.store.transition(
            project,
            run_id,
            "queued",
            allowed_from={"requires_action"},
            lease=self._lease(),
            expires_at=now() + (run.state.max_run_s or self.engine.settings.run_max_duration_s),
        )
        if queued is None:
            raise InvalidRequest(f'Runs in status "{run.status}" do not accept tool outputs.')
        # The step as the run's stream shows steps (its `include[]`: submitToolOutputs has none).
        step_out, queued_out = RunStepRecord(step).to_wire(run.state.include), RunRecord(queued).to_wire()
        first = [("thread.run.step.completed", step_out), ("thread.run.queued", queued_out)] if req.stream else None
        return step_out, queued_out, self._start(project, queued, first)

    async def _pending_step(self, conn: Any, run_id: str) -> RunStepRecord:
        s = tables.run_steps
        rows = (
            await conn.execute(
                sa.select(s.c.data, s.c.state)
                .where(s.c.run_id == run_id)
                .order_by(s.c.created_at.desc(), s.c.seq.desc())
            )
        ).all()
        for row in rows:
            if row.data["type"] == "tool_calls" and row.data["status"] == "in_progress":
                return RunStepRecord.from_row(row)
        raise InvalidRequest("The run has no tool call waiting for outputs.")

    async def list_steps(
        self, project: str, thread_id: str, run_id: str, params: ListParams, include: list[str]
    ) -> Page:
        async with self.db.read() as conn:
            await self._thread_run(conn, project, thread_id, run_id)
            page = await run_steps.list(
                conn,
                project,
                params,
                parent=run_id,
            )
        return Page([dict(RunStepRecord(s).to_wire(include)) for s in page.data], page.has_more)

    async def get_step(self, project: str, thread_id: str, run_id: str, step_id: str, include: list[str]) -> RunStep:
        async with self.db.read() as conn:
            await self._thread_run(conn, project, thread_id, run_id)
            step = await run_steps.get(conn, project, step_id, parent=run_id)
        if step is None:
            raise NotFound("run step", step_id)
        return RunStepRecord(step).to_wire(include)
