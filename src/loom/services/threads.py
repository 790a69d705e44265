"""Threads and their messages."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom import ids
from loom.clock import now
from loom.errors import InvalidRequest, NotFound
from loom.records import Message, MessageRecord, Thread, ThreadRecord
from loom.runs.options import concurrent_runs
from loom.schemas.assistants import ToolResources
from loom.schemas.threads import ImageFilePart, MessageCreate, MessageModify, TextPart, ThreadCreate, ThreadModify
from loom.services.common import (
    ACTIVE_RUN_STATUSES,
    ListParams,
    named_vector_stores,
    require_files,
    require_vector_stores,
)
from loom.services.tool_resources import tool_resources_wire
from loom.store import tables
from loom.store.collections import messages, threads
from loom.store.db import Database
from loom.store.repo import Page

log = logging.getLogger("loom")


def content_wire(content: str | list[Any]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": {"value": part.text, "annotations": []}})
        elif isinstance(part, ImageFilePart):
            parts.append(
                {
                    "type": "image_file",
                    "image_file": {"file_id": part.image_file.file_id, "detail": part.image_file.detail or "auto"},
                }
            )
        else:
            parts.append(
                {
                    "type": "image_url",
                    "image_url": {"url": part.image_url.url, "detail": part.image_url.detail or "auto"},
                }
            )
    return parts


async def insert_message(
    conn: AsyncConnection,
    project: str,
    thread_id: str,
    req: MessageCreate,
    *,
    run_id: str | None = None,
    assistant_id: str | None = None,
) -> dict[str, Any]:
    """Validate the files a message refers to and store it (status completed)."""
    referenced = [a.file_id for a in req.attachments or []]
    if not isinstance(req.content, str):
        referenced += [p.image_file.file_id for p in req.content if isinstance(p, ImageFilePart)]
    await require_files(conn, project, referenced)
    created = now()
    obj: dict[str, Any] = {
        "id": ids.new_id("message"),
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread_id,
        "status": "completed",
        "incomplete_details": None,
        "completed_at": None,
        "incomplete_at": None,
        "role": req.role,
        "content": content_wire(req.content),
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": [
            {"file_id": a.file_id, "tools": [{"type": t.type} for t in a.tools]} for a in req.attachments or []
        ],
        "metadata": dict(req.metadata or {}),
    }
    await messages.insert(conn, project, obj, thread_id=thread_id, run_id=run_id)
    searchable = [a.file_id for a in req.attachments or [] if any(t.type == "file_search" for t in a.tools)]
    if searchable:
        # As OpenAI did: file_search attachments go into the thread's vector store (made if missing).
        from loom.services.vector_store_rows import attach_to_thread_store

        await attach_to_thread_store(conn, project, thread_id, searchable)
    return obj


async def create_thread_row(
    conn: AsyncConnection, project: str, req: ThreadCreate, overrides: ToolResources | None = None
) -> dict[str, Any]:
    """Store a new thread and its messages; returns the thread as stored after them.

    `overrides` (createThreadAndRun's top-level `tool_resources`) replace the thread's own, part by
    part, before the messages: file_search attachments then go into the store the thread ends up with.
    """
    resources = await tool_resources_wire(conn, project, req.tool_resources)
    if overrides is not None:
        resources = await tool_resources_wire(conn, project, overrides, resources)
    thread: dict[str, Any] = {
        "id": ids.new_id("thread"),
        "object": "thread",
        "created_at": now(),
        "metadata": dict(req.metadata or {}),
        "tool_resources": resources,
    }
    await threads.insert(conn, project, thread)
    searched = False
    for message in req.messages or []:
        await insert_message(conn, project, thread["id"], message)
        searched = searched or any(t.type == "file_search" for a in message.attachments or [] for t in a.tools)
    if searched:
        # The attachments made or filled the thread's store, recorded in the row: answer with that.
        thread = await threads.get(conn, project, thread["id"]) or thread
    return thread


async def delete_thread_rows(conn: AsyncConnection, thread_id: str) -> None:
    for table in (tables.messages, tables.run_steps, tables.runs):
        await conn.execute(table.delete().where(table.c.thread_id == thread_id))


def _thread_and_active_run() -> sa.Select[tuple[int, Any]]:
    """The thread's existence and its active run in one statement: `create_message` runs it inside the
    (on SQLite, serialized) write transaction, where every statement costs a round trip to the driver's
    thread. Built once (bound parameters), not per message. The thread's row is locked (PostgreSQL) as a
    run's creation locks it: the two commit one at a time, so a run's view of a thread with concurrent
    runs (its messages up to a `seq`, `RunState.history_seq`) never gains a message added after the run."""
    t, r = tables.threads, tables.runs
    active = (
        sa.select(r.c.id).where(r.c.thread_id == t.c.id, r.c.status.in_(ACTIVE_RUN_STATUSES)).limit(1).scalar_subquery()
    )
    where = (t.c.id == sa.bindparam("thread_id"), t.c.project == sa.bindparam("project"))
    return sa.select(t.c.seq, active).where(*where).with_for_update(of=t)


_THREAD_AND_ACTIVE_RUN = _thread_and_active_run()
_THREAD_EXISTS = sa.select(tables.threads.c.seq).where(
    tables.threads.c.id == sa.bindparam("thread_id"), tables.threads.c.project == sa.bindparam("project")
)


class ThreadService:
    def __init__(self, db: Database, *, concurrent_runs: bool = False) -> None:
        self.db = db
        # Every thread takes messages while runs are active (`LOOM_CONCURRENT_RUNS`), else only
        # threads opted in by their metadata (`loom.runs.options`).
        self.concurrent_runs = concurrent_runs
        # Called with the id of each deleted thread (e.g. to end its sandbox session).
        self.on_delete: list[Callable[[str], Awaitable[None]]] = []

    async def create(self, project: str, req: ThreadCreate) -> Thread:
        async with self.db.write() as conn:
            return ThreadRecord(await create_thread_row(conn, project, req)).to_wire()

    async def get(self, project: str, thread_id: str) -> Thread:
        async with self.db.read() as conn:
            obj = await threads.get(conn, project, thread_id)
        if obj is None:
            raise NotFound("thread", thread_id)
        return ThreadRecord(obj).to_wire()

    async def modify(self, project: str, thread_id: str, req: ThreadModify) -> Thread:
        async with self.db.write() as conn:
            # The named stores first, then the row, locked until the write commits (the order a store's
            # delete takes them in): a delete that detaches the store is not overwritten by what was read.
            await require_vector_stores(conn, project, named_vector_stores(req.tool_resources))
            row = await threads.get_row(conn, project, thread_id, lock=True)
            if row is None:
                raise NotFound("thread", thread_id)
            obj = ThreadRecord.from_row(row).data
            if req.metadata is not None:
                obj["metadata"] = dict(req.metadata)
            if req.tool_resources is not None:
                obj["tool_resources"] = await tool_resources_wire(
                    conn, project, req.tool_resources, obj["tool_resources"]
                )
            await threads.replace(conn, project, obj)
        return ThreadRecord(obj).to_wire()

    async def delete(self, project: str, thread_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            if not await threads.delete(conn, project, thread_id):
                raise NotFound("thread", thread_id)
            await delete_thread_rows(conn, thread_id)
        for hook in self.on_delete:
            try:
                await hook(thread_id)
            except Exception:
                log.exception("cleanup after deleting thread %s failed", thread_id)
        return {"id": thread_id, "object": "thread.deleted", "deleted": True}

    # Messages.

    async def _require_thread(self, conn: AsyncConnection, project: str, thread_id: str) -> None:
        found = (await conn.execute(_THREAD_EXISTS, {"thread_id": thread_id, "project": project})).first()
        if found is None:
            raise NotFound("thread", thread_id)

    async def create_message(self, project: str, thread_id: str, req: MessageCreate) -> Message:
        async with self.db.write() as conn:
            found = (await conn.execute(_THREAD_AND_ACTIVE_RUN, {"thread_id": thread_id, "project": project})).first()
            if found is None:
                raise NotFound("thread", thread_id)
            run_id = found[1]
            if run_id is not None:
                # A thread with concurrent runs takes the message anyway.
                row = await threads.get_row(conn, project, thread_id)
                if row is None or not concurrent_runs(self.concurrent_runs, row.data):
                    raise InvalidRequest(f"Can't add messages to {thread_id} while a run {run_id} is active.")
            return MessageRecord(await insert_message(conn, project, thread_id, req)).to_wire()

    async def list_messages(self, project: str, thread_id: str, params: ListParams, run_id: str | None) -> Page:
        async with self.db.read() as conn:
            await self._require_thread(conn, project, thread_id)
            where = [tables.messages.c.run_id == run_id] if run_id is not None else []
            return await messages.list(
                conn,
                project,
                params,
                parent=thread_id,
                where=where,
            )

    async def get_message(self, project: str, thread_id: str, message_id: str) -> Message:
        async with self.db.read() as conn:
            await self._require_thread(conn, project, thread_id)
            obj = await messages.get(conn, project, message_id, parent=thread_id)
        if obj is None:
            raise NotFound("message", message_id)
        return MessageRecord(obj).to_wire()

    async def modify_message(self, project: str, thread_id: str, message_id: str, req: MessageModify) -> Message:
        async with self.db.write() as conn:
            await self._require_thread(conn, project, thread_id)
            obj = await messages.get(conn, project, message_id, parent=thread_id)
            if obj is None:
                raise NotFound("message", message_id)
            if req.metadata is not None:
                obj["metadata"] = dict(req.metadata)
                await messages.replace(conn, project, obj, parent=thread_id)
        return MessageRecord(obj).to_wire()

    async def delete_message(self, project: str, thread_id: str, message_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            await self._require_thread(conn, project, thread_id)
            if not await messages.delete(conn, project, message_id, parent=thread_id):
                raise NotFound("message", message_id)
        return {"id": message_id, "object": "thread.message.deleted", "deleted": True}
