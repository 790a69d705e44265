"""The console API (`/console/api/…`): what the console needs and `/v1` cannot give.

- `GET /console/api/me`: the project of the key (and whether the server is in open mode).
- `GET /console/api/threads`: the project's threads, newest first, a page at a time (`limit` ≤ 100, `after`,
  `before` cursors as in `/v1`), searchable with `q` (a thread id or part of one, metadata text, or
  `key=value` for an exact metadata value); each with its message count, run count, last activity and the
  status of its last run.
- `GET /console/api/threads/{thread_id}/runs/{run_id}/events`: a run's events as server-sent events (the
  same frames as a streamed `/v1` run), for watching a run that some other client started: first a snapshot
  of the run so far (its state, the steps and messages of this execution, the text streamed so far), then
  its live events to its end.

Every route authenticates like `/v1` (the same dependency): no key is 401, another project's ids are 404.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from loom.errors import InvalidRequest
from loom.services.common import list_params
from loom.store import tables
from loom.store.collections import threads
from loom.store.repo import Obj
from loom.web.auth import Project
from loom.web.deps import DatabaseDep, KeyRingDep, RunServiceDep
from loom.web.http import JSON
from loom.web.sse import event_stream

router = APIRouter(prefix="/console/api")

MAX_QUERY = 256
_RUN_TIMES = ("created_at", "started_at", "completed_at", "failed_at", "cancelled_at", "expires_at")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_filter(q: str) -> list[sa.ColumnElement[bool]]:
    """`key=value`: that metadata value exactly; anything else: part of the id or of the metadata text."""
    q = q.strip()
    if not q:
        return []
    if len(q) > MAX_QUERY:
        raise InvalidRequest(
            f"Invalid 'q': string too long. Expected a string with maximum length {MAX_QUERY}, "
            f"but got a string with length {len(q)} instead.",
            param="q",
            code="string_above_max_length",
        )
    t = tables.threads
    key, sep, value = q.partition("=")
    if sep and key.strip() and " " not in key.strip():
        return [t.c.data[("metadata", key.strip())].as_string() == value.strip()]
    pattern = _like(q.lower())
    metadata_text = sa.func.lower(sa.cast(t.c.data["metadata"], sa.Text))
    return [sa.or_(sa.func.lower(t.c.id).like(pattern, escape="\\"), metadata_text.like(pattern, escape="\\"))]


async def thread_stats(conn: AsyncConnection, project: str, thread_ids: Sequence[str]) -> dict[str, Obj]:
    """Per thread: message and run counts, the newest message and run times, and the last run."""
    stats: dict[str, Obj] = {
        tid: {"message_count": 0, "run_count": 0, "last": 0, "last_run": None} for tid in thread_ids
    }
    if not thread_ids:
        return stats
    m = tables.messages
    rows = await conn.execute(
        sa.select(m.c.thread_id, sa.func.count(), sa.func.max(m.c.created_at))
        .where(m.c.project == project, m.c.thread_id.in_(thread_ids))
        .group_by(m.c.thread_id)
    )
    for thread_id, count, newest in rows:
        stats[thread_id]["message_count"] = int(count)
        stats[thread_id]["last"] = int(newest or 0)
    r = tables.runs
    rows = await conn.execute(
        sa.select(r.c.thread_id, sa.func.count())
        .where(r.c.project == project, r.c.thread_id.in_(thread_ids))
        .group_by(r.c.thread_id)
    )
    for thread_id, count in rows:
        stats[thread_id]["run_count"] = int(count)
    rank = (
        sa.func.row_number()
        .over(partition_by=r.c.thread_id, order_by=(r.c.created_at.desc(), r.c.seq.desc()))
        .label("rank")
    )
    latest = (
        sa.select(r.c.thread_id, r.c.data, rank).where(r.c.project == project, r.c.thread_id.in_(thread_ids)).subquery()
    )
    for thread_id, data in await conn.execute(sa.select(latest.c.thread_id, latest.c.data).where(latest.c.rank == 1)):
        run = dict(data)
        times = [int(run[k]) for k in _RUN_TIMES if k != "expires_at" and isinstance(run.get(k), int)]
        entry = stats[thread_id]
        entry["last"] = max([entry["last"], *times])
        entry["last_run"] = {"id": run["id"], "status": run["status"], "model": run.get("model")}
    return stats


@router.get("/me")
async def me(project: Project, keys: KeyRingDep) -> JSON:
    return JSON({"object": "console.session", "project": project, "open": await keys.is_open()})


@router.get("/threads")
async def list_threads(request: Request, project: Project, db: DatabaseDep) -> JSON:
    params = list_params(request.query_params, default_limit=50)
    where = search_filter(request.query_params.get("q", ""))
    async with db.read() as conn:
        page = await threads.list(conn, project, params, where=where)
        stats = await thread_stats(conn, project, [t["id"] for t in page.data])
    data: list[Obj] = []
    for thread in page.data:
        s = stats[thread["id"]]
        last_run: Obj | None = s["last_run"]
        data.append(
            {
                "id": thread["id"],
                "object": "console.thread",
                "created_at": thread["created_at"],
                "metadata": thread.get("metadata") or {},
                "tool_resources": thread.get("tool_resources") or {},
                "message_count": s["message_count"],
                "run_count": s["run_count"],
                "last_activity_at": max(int(thread["created_at"]), s["last"]),
                "last_run": last_run,
            }
        )
    page_wire = {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }
    return JSON(page_wire)


@router.get("/threads/{thread_id}/runs/{run_id}/events")
async def run_events(project: Project, runs: RunServiceDep, thread_id: str, run_id: str) -> Response:
    """The run now, then its events until it stops (requires_action included), then `done`.

    Events come from the replica executing the run; a run executing elsewhere (or no longer executing)
    answers its current state and ends, and the console says it is not live."""
    return event_stream(await runs.events(project, thread_id, run_id))
