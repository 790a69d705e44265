"""The outbox: a delivery row per interested endpoint, written in the transaction of the status change.

Called at the status writes (runs' transitions, vector-store files settling). When the project has no
enabled endpoint the cost is one indexed lookup that finds nothing, and only on the changes that are
events (a run's end or its wait for tool outputs, a file's end), never on the others.

This process's delivery workers are woken when the transaction commits (not before: a worker must find
the row); other replicas find it on their next poll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from weakref import WeakKeyDictionary

import pydantic_core
import sqlalchemy as sa
from sqlalchemy import Connection, Engine, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom import ids
from loom.store import tables as core
from loom.webhooks import BATCH_COMPLETED, FILE_EVENTS, RUN_EVENTS
from loom.webhooks.tables import webhook_deliveries, webhook_endpoints

_E = webhook_endpoints
_ENABLED = sa.select(_E.c.id, _E.c.data).where(_E.c.project == sa.bindparam("project"), _E.c.enabled == sa.true())
_INSERT = webhook_deliveries.insert()
_B = core.vector_store_file_batches
_F = core.vector_store_files
_BATCH_IN_PROGRESS = sa.select(sa.func.count()).where(
    _F.c.vector_store_id == sa.bindparam("store_id"),
    _F.c.batch_id == sa.bindparam("batch_id"),
    _F.c.status == "in_progress",
)

# The delivery workers of this process per database engine (usually one worker, one engine): called after
# a transaction of that engine that recorded events commits, and not for another engine's (servers or
# tests sharing a process wake only their own workers).
_wakers: WeakKeyDictionary[Engine, list[Callable[[], None]]] = WeakKeyDictionary()


def add_waker(engine: AsyncEngine, wake: Callable[[], None]) -> None:
    _wakers.setdefault(engine.sync_engine, []).append(wake)


def remove_waker(engine: AsyncEngine, wake: Callable[[], None]) -> None:
    mine = _wakers.get(engine.sync_engine, [])
    if wake in mine:
        mine.remove(wake)
    if not mine:
        _wakers.pop(engine.sync_engine, None)


def _wake_all(conn: Connection) -> None:
    for wake in list(_wakers.get(conn.engine, ())):
        wake()


async def _endpoints(conn: AsyncConnection, project: str) -> list[tuple[str, list[str]]]:
    """The project's enabled endpoints and the event types each wants (one indexed lookup)."""
    rows = (await conn.execute(_ENABLED, {"project": project})).all()
    return [(endpoint_id, list(wire.get("event_types", ()))) for endpoint_id, wire in rows]


async def record(
    conn: AsyncConnection,
    project: str,
    event_type: str,
    data: Mapping[str, Any],
    endpoints: list[tuple[str, list[str]]] | None = None,
) -> int:
    """A pending delivery of this event to each of the project's enabled endpoints that want it, in
    `conn`'s transaction; returns how many."""
    if endpoints is None:
        endpoints = await _endpoints(conn, project)
    wanting = [endpoint_id for endpoint_id, types in endpoints if event_type in types]
    if not wanting:
        return 0
    happened = time.time()
    event_id = ids.new_id("event")
    body = {"object": "event", "id": event_id, "type": event_type, "created_at": int(happened), "data": dict(data)}
    payload = pydantic_core.to_json(body).decode()
    await conn.execute(
        _INSERT,
        [
            {
                "id": ids.new_id("webhook_delivery"),
                "project": project,
                "endpoint_id": endpoint_id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": payload,
                "status": "pending",
                "attempts": 0,
                "created_at": happened,
                "next_attempt_at": happened,
            }
            for endpoint_id in wanting
        ],
    )
    event.listen(conn.sync_connection, "commit", _wake_all, once=True)
    return len(wanting)


async def record_run(conn: AsyncConnection, project: str, run: Mapping[str, Any]) -> None:
    """The run's new status, if it is one a webhook can be told (`thread.run.<status>`)."""
    event_type = RUN_EVENTS.get(run["status"])
    if event_type is not None:
        await record(conn, project, event_type, {"id": run["id"], "thread_id": run["thread_id"]})


async def record_file(conn: AsyncConnection, project: str, obj: Mapping[str, Any], batch_id: str | None) -> None:
    """A vector-store file that settled (`completed` or `failed`), and its batch if it was the batch's last.

    The batch's row is locked before its files are counted, so of two files of one batch settling at
    once, the one that commits second sees the first settled: the batch's event is recorded once."""
    event_type = FILE_EVENTS.get(obj["status"])
    if event_type is None:
        return
    endpoints = await _endpoints(conn, project)
    if not endpoints:
        return
    store_id = obj["vector_store_id"]
    await record(conn, project, event_type, {"id": obj["id"], "vector_store_id": store_id}, endpoints)
    if batch_id is None or not any(BATCH_COMPLETED in types for _id, types in endpoints):
        return
    batch = (
        await conn.execute(sa.select(_B.c.data).where(_B.c.id == batch_id, _B.c.project == project).with_for_update())
    ).first()
    if batch is None or batch[0].get("status") == "cancelled":
        return
    left = (await conn.execute(_BATCH_IN_PROGRESS, {"store_id": store_id, "batch_id": batch_id})).scalar_one()
    if not left:
        await record(conn, project, BATCH_COMPLETED, {"id": batch_id, "vector_store_id": store_id}, endpoints)
