"""Rules shared by several resources: list parameters, references to files and stores, active runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.runs.status import ACTIVE
from loom.schemas.assistants import ToolResources, ToolResourcesUpdate
from loom.store import tables
from loom.store.collections import assistants, threads
from loom.store.json_sql import json_list_has
from loom.store.repo import Order

# The statuses in which a run holds its thread (one definition: `loom.runs.status.ACTIVE`).
ACTIVE_RUN_STATUSES = tuple(sorted(ACTIVE))


@dataclass(frozen=True)
class ListParams:
    limit: int = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


def list_params(
    query: Mapping[str, str], *, max_limit: int = 100, default_limit: int = 20, allow_before: bool = True
) -> ListParams:
    """`limit`, `order`, `after`, `before` from a query string, with OpenAI's errors."""
    raw_limit = query.get("limit")
    limit = default_limit
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise InvalidRequest(
                "Invalid type for 'limit': expected an integer, but got a string instead.",
                param="limit",
                code="invalid_type",
            ) from None
        if limit < 1 or limit > max_limit:
            raise InvalidRequest(
                f"Invalid 'limit': integer {'below minimum' if limit < 1 else 'above maximum'} value. "
                f"Expected a value {'>= 1' if limit < 1 else f'<= {max_limit}'}, but got {limit} instead.",
                param="limit",
                code="integer_below_min_value" if limit < 1 else "integer_above_max_value",
            )
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", param="order", code="invalid_value"
        )
    before = query.get("before") if allow_before else None
    return ListParams(limit=limit, order="asc" if order == "asc" else "desc", after=query.get("after"), before=before)


async def require_files(conn: AsyncConnection, project: str, file_ids: Iterable[str]) -> None:
    wanted = list(dict.fromkeys(file_ids))
    if not wanted:
        return
    t = tables.files
    found = set(
        (
            await conn.execute(
                sa.select(t.c.id).where(
                    t.c.project == project,
                    t.c.id.in_(wanted),
                    sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now()),
                )
            )
        ).scalars()
    )
    for file_id in wanted:
        if file_id not in found:
            raise NotFound("file", file_id)


async def require_vector_stores(conn: AsyncConnection, project: str, ids: Iterable[str]) -> None:
    t = tables.vector_stores
    for vs_id in ids:
        # Held until this write commits (PostgreSQL; SQLite has one writer and renders no FOR SHARE): a
        # concurrent delete of the store waits for it, then finds (and detaches) the reference this write
        # makes; a delete that went first makes this a 404.
        query = sa.select(t.c.seq).where(t.c.id == vs_id, t.c.project == project).with_for_update(read=True)
        if (await conn.execute(query)).first() is None:
            raise NotFound("vector store", vs_id)


def named_vector_stores(resources: ToolResources | ToolResourcesUpdate | None) -> list[str]:
    fs = resources.file_search if resources is not None else None
    return list(fs.vector_store_ids or []) if fs is not None else []


async def forget_vector_store(conn: AsyncConnection, project: str, vector_store_id: str) -> None:
    """Detach a deleted store from the project's assistants and threads, as OpenAI did (their
    `file_search.vector_store_ids` no longer name it), so writing back what was read stays valid."""
    for collection in (assistants, threads):
        t = collection.table
        # A scan of the project's rows (50 to 100 ms per 100k rows on either backend), narrowed
        # by the id (confirmed on the parsed object below); rows locked on PostgreSQL.
        named = json_list_has(t.c.data, ("tool_resources", "file_search", "vector_store_ids"), vector_store_id)
        query = sa.select(t.c.data).where(t.c.project == project, named).with_for_update()
        for (data,) in (await conn.execute(query)).all():
            obj = dict(data)
            resources = dict(obj.get("tool_resources") or {})
            fs = dict(resources.get("file_search") or {})
            store_ids = list(fs.get("vector_store_ids") or [])
            if vector_store_id not in store_ids:
                continue
            fs["vector_store_ids"] = [i for i in store_ids if i != vector_store_id]
            resources["file_search"] = fs
            obj["tool_resources"] = resources
            await collection.replace(conn, project, obj)


# Built once: checked on every message and run creation.
_ACTIVE_RUN = (
    sa.select(tables.runs.c.id)
    .where(tables.runs.c.thread_id == sa.bindparam("thread_id"), tables.runs.c.status.in_(ACTIVE_RUN_STATUSES))
    .limit(1)
)


async def active_run(conn: AsyncConnection, thread_id: str) -> str | None:
    row = (await conn.execute(_ACTIVE_RUN, {"thread_id": thread_id})).first()
    return row[0] if row is not None else None


_ACTIVE_RUNS = sa.select(tables.runs.c.id).where(
    tables.runs.c.thread_id == sa.bindparam("thread_id"), tables.runs.c.status.in_(ACTIVE_RUN_STATUSES)
)


async def active_runs(conn: AsyncConnection, thread_id: str) -> list[str]:
    """Every active run of the thread (several on a thread with concurrent runs)."""
    return [row[0] for row in (await conn.execute(_ACTIVE_RUNS, {"thread_id": thread_id})).all()]
