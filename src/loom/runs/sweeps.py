"""The sweeps every replica runs over the runs table: runs whose executor is gone are failed (or their
cancel finished), runs past `expires_at` expire, and the open steps and messages of each are closed.

A run's executor normally ends it; these end the runs whose executor cannot: its replica died (the lease
lapsed), or it never started (a single process restarted on SQLite). Runs handed over by a draining
replica are not failed: another replica takes them over (`RunEngine.take_over_handed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa

from loom.clock import now
from loom.config import Settings
from loom.records import RunState, step_to_wire
from loom.runs.bus import EventBus
from loom.runs.endings import INTERRUPTED, close_open
from loom.runs.store import HANDED_OVER, RunStore
from loom.store import tables
from loom.store.collections import messages, run_steps
from loom.store.db import Database


class RunSweeps:
    """`executing(run_id)`: an executor of this replica holds the run; `here(run_id)`: this replica is
    starting or executing it (its events are published here)."""

    def __init__(
        self,
        db: Database,
        store: RunStore,
        bus: EventBus,
        settings: Settings,
        *,
        executing: Callable[[str], bool],
        here: Callable[[str], bool],
    ) -> None:
        self.db = db
        self.store = store
        self.bus = bus
        self.settings = settings
        self._executing = executing
        self._here = here

    async def close_leftovers(
        self, project: str, run_id: str, *, step_status: str, reason: str, error: dict[str, str] | None
    ) -> None:
        """Close the open steps and messages of a run no executor holds (`endings.close_open`)."""
        s, m, r = tables.run_steps, tables.messages, tables.runs
        async with self.db.write() as conn:
            # Step events show what a GET of the step with the run's `include[]` shows.
            include = RunState.from_json(await conn.scalar(sa.select(r.c.state).where(r.c.id == run_id))).include
            for (data,) in (await conn.execute(sa.select(s.c.data).where(s.c.run_id == run_id))).all():
                if data["status"] == "in_progress":
                    step = dict(data)
                    close_open([step], [], step_status=step_status, reason=reason, error=error)
                    await run_steps.replace(conn, project, step)
                    self.bus.publish(run_id, f"thread.run.step.{step_status}", step_to_wire(step, include))
            for (data,) in (await conn.execute(sa.select(m.c.data).where(m.c.run_id == run_id))).all():
                if data["status"] == "in_progress":
                    message = dict(data)
                    close_open([], [message], step_status=step_status, reason=reason, error=error)
                    await messages.replace(conn, project, message)

    async def recover(self, *, orphans_only: bool) -> int:
        """Fail (or finish cancelling) runs whose executor is gone: never leave a run stuck in progress.
        Runs handed over by a draining replica are not: they are taken over (`take_over_handed`)."""
        t = tables.runs
        query = sa.select(t.c.id, t.c.project, t.c.status).where(
            t.c.status.in_(("queued", "in_progress", "cancelling")),
            sa.or_(t.c.lease_owner.is_(None), t.c.lease_owner != HANDED_OVER),
        )
        if orphans_only:
            query = query.where(t.c.lease_expires_at.is_not(None), t.c.lease_expires_at < time.time())
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        count = 0
        for run_id, project, state in rows:
            if self._executing(run_id):
                continue
            error = {"code": "server_error", "message": INTERRUPTED}
            if state == "cancelling":
                await self.close_leftovers(project, run_id, step_status="cancelled", reason="run_cancelled", error=None)
                run = await self.store.transition(project, run_id, "cancelled", allowed_from={"cancelling"})
            else:
                await self.close_leftovers(project, run_id, step_status="failed", reason="run_failed", error=error)
                run = await self.store.transition(project, run_id, "failed", allowed_from={state}, last_error=error)
            if run is not None:
                count += 1
                self.bus.publish(run_id, f"thread.run.{run['status']}", dict(run))
                self.bus.end(run_id)
        return count

    async def expire_overdue(self) -> int:
        """Runs queued or in progress past `expires_at` that no executor here holds become `expired`:
        their executor died (lease lapsed), or has not ended them a lease length after the deadline."""
        t = tables.runs
        grace = max(int(self.settings.lease_s), 1)
        query = sa.select(t.c.id, t.c.project, t.c.status).where(
            t.c.status.in_(("queued", "in_progress")),
            t.c.expires_at < now(),
            sa.or_(
                t.c.lease_expires_at.is_(None),
                t.c.lease_expires_at < time.time(),
                t.c.expires_at < now() - grace,
            ),
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        count = 0
        for run_id, project, state in rows:
            if self._here(run_id):
                continue
            await self.close_leftovers(project, run_id, step_status="expired", reason="run_expired", error=None)
            run = await self.store.transition(project, run_id, "expired", allowed_from={state})
            if run is not None:
                count += 1
                self.bus.publish(run_id, "thread.run.expired", dict(run))
                self.bus.end(run_id)
        return count

    async def expire_waiting(self) -> int:
        """Runs waiting for tool outputs past `expires_at` become `expired`."""
        t = tables.runs
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(t.c.id, t.c.project).where(t.c.status == "requires_action", t.c.expires_at < now())
                )
            ).all()
        for run_id, project in rows:
            await self.close_leftovers(project, run_id, step_status="expired", reason="run_expired", error=None)
            run = await self.store.transition(project, run_id, "expired", allowed_from={"requires_action"})
            if run is not None:
                self.bus.publish(run_id, "thread.run.expired", dict(run))
                self.bus.end(run_id)
        return len(rows)
