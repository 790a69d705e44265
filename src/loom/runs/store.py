"""Reads and writes of runs, steps and messages for the engine: every change committed before its event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from loom.ops import events
from loom.records import RunRecord, RunState, RunStepRecord, StepState
from loom.runs import status
from loom.store import tables
from loom.store.collections import assistants, messages, run_steps, runs, threads
from loom.store.db import Database
from loom.webhooks import outbox

# The thread's messages from before the run, the run's steps, the run's own messages by id.
RunContext = tuple[list[dict[str, Any]], list[RunStepRecord], dict[str, dict[str, Any]]]
# The run's assistant and thread (None if deleted) and its context.
Preloaded = tuple[dict[str, Any] | None, dict[str, Any] | None, RunContext]


# Read before every model call; built once.
_THREAD_MESSAGES = (
    sa.select(tables.messages.c.data, tables.messages.c.seq)
    .where(tables.messages.c.thread_id == sa.bindparam("thread_id"))
    .order_by(tables.messages.c.created_at, tables.messages.c.seq)
)
_RUN_STEPS = (
    sa.select(tables.run_steps.c.data, tables.run_steps.c.state)
    .where(tables.run_steps.c.run_id == sa.bindparam("run_id"))
    .order_by(tables.run_steps.c.created_at, tables.run_steps.c.seq)
)


_SET_STATE = (
    tables.runs.update()
    .where(tables.runs.c.id == sa.bindparam("run_id"))
    .values(state=sa.bindparam("state", type_=tables.runs.c.state.type))
)

# The `lease_owner` of a run a draining replica handed over (`RunStore.hand_over`): still `in_progress`
# for its clients, its lease held by no replica and on offer to any (`RunStore.take_over`).
HANDED_OVER = "handed_over"

# A step saved with its calls' transcript (`StepState`), or only its wire object.
Saved = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], StepState]


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_run(self, project: str, run_id: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            return await runs.get(conn, project, run_id)

    async def transition(
        self,
        project: str,
        run_id: str,
        target: str,
        *,
        allowed_from: set[str] | None = None,
        state: RunState | None = None,
        lease: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Move the run to `target` if its *current* (committed) status allows; None if it does not.
        `fields` are wire fields set with it; `state`, when given, replaces the run's bookkeeping;
        `lease` (its `lease_owner` and `lease_expires_at`) leases it with the same commit (a run queued
        again: see `RunService._lease`).

        The run is re-read inside the write transaction, so a concurrent metadata update or cancel
        is never overwritten with a stale copy. This is the one writer of a run's status: the wire
        `status` and the row's `status` column change together here (and in `claim`).
        """
        async with self.db.write() as conn:
            return await self._transition(conn, project, run_id, target, allowed_from, fields, state, lease)

    async def save_and_transition(
        self,
        project: str,
        run_id: str,
        objs: list[Saved],
        target: str,
        *,
        state: RunState | None = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """`save_objects` and `transition` in one transaction (one commit less at the end of a run).
        The objects are saved even when the transition is not allowed."""
        async with self.db.write() as conn:
            await self._save(conn, project, objs)
            return await self._transition(conn, project, run_id, target, None, fields, state)

    @staticmethod
    async def _transition(
        conn: Any,
        project: str,
        run_id: str,
        target: str,
        allowed_from: set[str] | None,
        fields: dict[str, Any],
        state: RunState | None = None,
        lease: Mapping[str, Any] | None = None,
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
        extra: dict[str, Any] = (
            {} if target in ("queued", "in_progress", "cancelling") else {"lease_owner": None, "lease_expires_at": None}
        )
        if state is not None:
            extra["state"] = state.to_json()
        if lease is not None:
            extra.update(lease)
        await runs.replace(conn, project, run, status=run["status"], expires_at=run["expires_at"], **extra)
        await outbox.record_run(conn, project, run)
        events.run_moved(project, run)
        return run

    async def save_state(self, run_id: str, state: RunState) -> None:
        """Replace the run's bookkeeping (its wire object is not touched)."""
        async with self.db.write() as conn:
            await conn.execute(_SET_STATE, {"run_id": run_id, "state": state.to_json()})

    async def claim(self, project: str, run_id: str, owner: str, now_ts: float, until: float) -> RunRecord | None:
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
            record = RunRecord.from_row(row)
            status.apply(record.data, "in_progress")
            await runs.replace(conn, project, record.data, status=record.status, expires_at=record.data["expires_at"])
        return record

    async def hand_over(self, run_id: str, owner: str, state: RunState) -> bool:
        """Give up the lease of a run executing here (`owner`) for another replica to go on with it
        (a drain): it stays `in_progress`, with its bookkeeping as of its last committed turn. False
        when its status changed meanwhile (a cancel) or the lease is not `owner`'s any more."""
        t = tables.runs
        async with self.db.write() as conn:
            result = await conn.execute(
                t.update()
                .where(t.c.id == run_id, t.c.lease_owner == owner, t.c.status == "in_progress")
                .values(lease_owner=HANDED_OVER, lease_expires_at=0.0, state=state.to_json())
            )
        return bool(result.rowcount)

    async def take_over(self, project: str, run_id: str, owner: str, until: float) -> RunRecord | None:
        """Take the lease of a run another replica handed over (`hand_over`); None if it is not on
        offer (another replica took it first, or it was cancelled or expired meanwhile)."""
        t = tables.runs
        async with self.db.write() as conn:
            result = await conn.execute(
                t.update()
                .where(
                    t.c.id == run_id,
                    t.c.project == project,
                    t.c.status == "in_progress",
                    t.c.lease_owner == HANDED_OVER,
                )
                .values(lease_owner=owner, lease_expires_at=until)
            )
            if not result.rowcount:
                return None
            row = await runs.get_row(conn, project, run_id)
        return RunRecord.from_row(row) if row is not None else None

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

    async def save_objects(self, project: str, *objs: Saved) -> None:
        """Save steps and messages (kind, object), a step with its calls' `StepState` as a third item."""
        async with self.db.write() as conn:
            await self._save(conn, project, list(objs))

    @staticmethod
    async def _save(conn: Any, project: str, objs: list[Saved]) -> None:
        for saved in objs:
            kind, obj = saved[0], saved[1]
            if kind == "step" and len(saved) == 3:
                await run_steps.replace(conn, project, obj, state=saved[2].to_json())
            elif kind == "step":
                await run_steps.replace(conn, project, obj)
            else:
                await messages.replace(conn, project, obj)

    async def preload(self, project: str, run: dict[str, Any]) -> Preloaded:
        """What a run's first model call needs, read in one go (while the run is being claimed)."""
        async with self.db.read() as conn:
            assistant = await assistants.get(conn, project, run["assistant_id"])
            thread = await threads.get(conn, project, run["thread_id"])
            state = await conn.scalar(sa.select(tables.runs.c.state).where(tables.runs.c.id == run["id"]))
            context = await self._run_context(conn, run, RunState.from_json(state))
        return assistant, thread, context

    @classmethod
    async def new_run_context(cls, conn: Any, run: dict[str, Any], state: RunState | None = None) -> RunContext:
        """The context of a run being created, read in its creating transaction."""
        return await cls._run_context(conn, run, state, new=True)

    async def run_context(self, project: str, run: dict[str, Any], state: RunState | None = None) -> RunContext:
        """The thread's messages from before this run (as of its creation on a thread with concurrent
        runs: `state.history_seq`), this run's steps, and this run's messages by id."""
        async with self.db.read() as conn:
            return await self._run_context(conn, run, state)

    @staticmethod
    async def history_view(conn: Any, thread_id: str, siblings: list[str]) -> RunState:
        """What a run created now on a thread with concurrent runs sees of it (`RunState.history_seq`,
        `siblings`): read in the creating transaction, which holds the thread's row."""
        m = tables.messages
        last = await conn.scalar(sa.select(sa.func.max(m.c.seq)).where(m.c.thread_id == thread_id))
        return RunState(history_seq=int(last or 0), siblings=tuple(siblings))

    @staticmethod
    async def _run_context(conn: Any, run: dict[str, Any], state: RunState | None, *, new: bool = False) -> RunContext:
        """`new`: the run was created in this transaction, so it has no steps to read yet."""
        rows = (await conn.execute(_THREAD_MESSAGES, {"thread_id": run["thread_id"]})).all()
        step_rows = [] if new else (await conn.execute(_RUN_STEPS, {"run_id": run["id"]})).all()
        upto = state.history_seq if state is not None else None
        siblings = set(state.siblings) if state is not None else set()
        history: list[dict[str, Any]] = []
        own: dict[str, dict[str, Any]] = {}
        for data, seq in rows:
            if data.get("run_id") == run["id"] and data["role"] == "assistant":
                own[data["id"]] = dict(data)
            elif upto is None or (seq <= upto and data.get("run_id") not in siblings):
                history.append(dict(data))
        return history, [RunStepRecord.from_row(r) for r in step_rows], own
