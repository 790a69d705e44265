"""Reads and writes of runs, steps and messages for the engine: every change committed before its event."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from loom.ops import events
from loom.runs import status
from loom.store import tables
from loom.store.collections import assistants, messages, run_steps, runs, threads
from loom.store.db import Database
from loom.webhooks import outbox

# The thread's messages from before the run, the run's steps, the run's own messages by id.
RunContext = tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]
# The run's assistant and thread (None if deleted) and its context.
Preloaded = tuple[dict[str, Any] | None, dict[str, Any] | None, RunContext]


# Read before every model call; built once.
_THREAD_MESSAGES = (
    sa.select(tables.messages.c.data)
    .where(tables.messages.c.thread_id == sa.bindparam("thread_id"))
    .order_by(tables.messages.c.created_at, tables.messages.c.seq)
)
_RUN_STEPS = (
    sa.select(tables.run_steps.c.data)
    .where(tables.run_steps.c.run_id == sa.bindparam("run_id"))
    .order_by(tables.run_steps.c.created_at, tables.run_steps.c.seq)
)


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The wire view: Loom keeps its own bookkeeping under keys that start with `_`."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_run(self, project: str, run_id: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            return await runs.get(conn, project, run_id)

    async def transition(
        self, project: str, run_id: str, target: str, *, allowed_from: set[str] | None = None, **fields: Any
    ) -> dict[str, Any] | None:
        """Move the run to `target` if its *current* (committed) status allows; None if it does not.

        The run is re-read inside the write transaction, so a concurrent metadata update or cancel
        is never overwritten with a stale copy.
        """
        async with self.db.write() as conn:
            return await self._transition(conn, project, run_id, target, allowed_from, fields)

    async def save_and_transition(
        self, project: str, run_id: str, objs: list[tuple[str, dict[str, Any]]], target: str, **fields: Any
    ) -> dict[str, Any] | None:
        """`save_objects` and `transition` in one transaction (one commit less at the end of a run).
        The objects are saved even when the transition is not allowed."""
        async with self.db.write() as conn:
            await self._save(conn, project, objs)
            return await self._transition(conn, project, run_id, target, None, fields)

    @staticmethod
    async def _transition(
        conn: Any, project: str, run_id: str, target: str, allowed_from: set[str] | None, fields: dict[str, Any]
    ) -> dict[str, Any] | None:
        row = await runs.get_row(conn, project, run_id, lock=True)
        if row is None:
            return None
        run = dict(row.data)
        if allowed_from is not None and run["status"] not in allowed_from:
            return None
        if not status.can_move(run["status"], target):
            return None
        status.apply(run, target, **fields)
        lease = (
            {} if target in ("queued", "in_progress", "cancelling") else {"lease_owner": None, "lease_expires_at": None}
        )
        await runs.replace(conn, project, run, status=run["status"], expires_at=run["expires_at"], **lease)
        await outbox.record_run(conn, project, run)
        events.run_moved(project, run)
        return run

    async def update_run(self, project: str, run_id: str, **fields: Any) -> dict[str, Any] | None:
        """Change fields that are not the status (usage bookkeeping)."""
        async with self.db.write() as conn:
            row = await runs.get_row(conn, project, run_id, lock=True)
            if row is None:
                return None
            run = dict(row.data)
            run.update(fields)
            await runs.replace(conn, project, run)
        return run

    async def claim(self, project: str, run_id: str, owner: str, now_ts: float, until: float) -> dict[str, Any] | None:
        """Take the lease of a queued run and move it to `in_progress`, in one transaction (one commit
        less before the first token); None if it is not queued or another replica holds it."""
        t = tables.runs
        async with self.db.write() as conn:
            result = await conn.execute(
                t.update()
                .where(
                    t.c.id == run_id,
                    t.c.project == project,
                    t.c.status == "queued",
                    sa.or_(t.c.lease_owner.is_(None), t.c.lease_owner == owner, t.c.lease_expires_at < now_ts),
                )
                .values(lease_owner=owner, lease_expires_at=until)
            )
            if not result.rowcount:
                return None
            row = await runs.get_row(conn, project, run_id, lock=True)
            if row is None:
                return None
            run = dict(row.data)
            status.apply(run, "in_progress")
            await runs.replace(conn, project, run, status=run["status"], expires_at=run["expires_at"])
        return run

    async def renew(self, run_id: str, owner: str, until: float) -> str | None:
        """Extend the lease; returns the run's status (None if the lease was lost)."""
        t = tables.runs
        async with self.db.write() as conn:
            result = await conn.execute(
                t.update().where(t.c.id == run_id, t.c.lease_owner == owner).values(lease_expires_at=until)
            )
            if not result.rowcount:
                return None
            row = (await conn.execute(sa.select(t.c.status).where(t.c.id == run_id))).first()
        return str(row[0]) if row is not None else None

    async def insert_objects(self, project: str, *objs: tuple[str, dict[str, Any]]) -> None:
        """Insert steps and messages (kind, object) in one transaction."""
        async with self.db.write() as conn:
            for kind, obj in objs:
                if kind == "step":
                    await run_steps.insert(conn, project, obj, thread_id=obj["thread_id"], run_id=obj["run_id"])
                else:
                    await messages.insert(conn, project, obj, thread_id=obj["thread_id"], run_id=obj["run_id"])

    async def save_objects(self, project: str, *objs: tuple[str, dict[str, Any]]) -> None:
        async with self.db.write() as conn:
            await self._save(conn, project, list(objs))

    @staticmethod
    async def _save(conn: Any, project: str, objs: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, obj in objs:
            if kind == "step":
                await run_steps.replace(conn, project, obj)
            else:
                await messages.replace(conn, project, obj)

    async def preload(self, project: str, run: dict[str, Any]) -> Preloaded:
        """What a run's first model call needs, read in one go (while the run is being claimed)."""
        async with self.db.read() as conn:
            assistant = await assistants.get(conn, project, run["assistant_id"])
            thread = await threads.get(conn, project, run["thread_id"])
            context = await self._run_context(conn, run)
        return assistant, thread, context

    @classmethod
    async def new_run_context(cls, conn: Any, run: dict[str, Any]) -> RunContext:
        """The context of a run being created, read in its creating transaction."""
        return await cls._run_context(conn, run, new=True)

    async def run_context(self, project: str, run: dict[str, Any]) -> RunContext:
        """The thread's messages from before this run, this run's steps, and this run's messages by id."""
        async with self.db.read() as conn:
            return await self._run_context(conn, run)

    @staticmethod
    async def _run_context(conn: Any, run: dict[str, Any], *, new: bool = False) -> RunContext:
        """`new`: the run was created in this transaction, so it has no steps to read yet."""
        rows = (await conn.execute(_THREAD_MESSAGES, {"thread_id": run["thread_id"]})).all()
        step_rows = [] if new else (await conn.execute(_RUN_STEPS, {"run_id": run["id"]})).all()
        history: list[dict[str, Any]] = []
        own: dict[str, dict[str, Any]] = {}
        for (data,) in rows:
            if data.get("run_id") == run["id"] and data["role"] == "assistant":
                own[data["id"]] = dict(data)
            else:
                history.append(dict(data))
        return history, [dict(r[0]) for r in step_rows], own
