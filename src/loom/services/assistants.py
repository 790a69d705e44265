"""Assistants: create, list, retrieve, modify, delete."""

from __future__ import annotations

from typing import Any

from loom import ids
from loom.clock import now
from loom.config import Settings
from loom.errors import NotFound
from loom.runs.options import check_limits
from loom.schemas.assistants import AssistantCreate, AssistantModify, response_format_wire, tool_wire
from loom.services.common import ListParams, named_vector_stores, require_vector_stores
from loom.services.tool_resources import tool_resources_wire
from loom.store.collections import assistants
from loom.store.db import Database
from loom.store.repo import Page


class AssistantService:
    def __init__(self, db: Database, settings: Settings | None = None) -> None:
        self.db = db
        # The bounds of the run limits an assistant's metadata may set (`loom.runs.options`).
        self.settings = settings or Settings()

    async def create(self, project: str, req: AssistantCreate) -> dict[str, Any]:
        check_limits(self.settings, req.metadata)
        async with self.db.write() as conn:
            obj: dict[str, Any] = {
                "id": ids.new_id("assistant"),
                "object": "assistant",
                "created_at": now(),
                "name": req.name,
                "description": req.description,
                "model": req.model,
                "instructions": req.instructions,
                "tools": [tool_wire(t) for t in req.tools or []],
                "tool_resources": await tool_resources_wire(conn, project, req.tool_resources),
                "metadata": dict(req.metadata or {}),
                "temperature": req.temperature if req.temperature is not None else 1.0,
                "top_p": req.top_p if req.top_p is not None else 1.0,
                "response_format": response_format_wire(req.response_format),
                "reasoning_effort": req.reasoning_effort,
            }
            await assistants.insert(conn, project, obj)
        return obj

    async def get(self, project: str, assistant_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            obj = await assistants.get(conn, project, assistant_id)
        if obj is None:
            raise NotFound("assistant", assistant_id)
        return obj

    async def list(self, project: str, params: ListParams) -> Page:
        async with self.db.read() as conn:
            return await assistants.list(conn, project, params)

    async def modify(self, project: str, assistant_id: str, req: AssistantModify) -> dict[str, Any]:
        check_limits(self.settings, req.metadata)
        async with self.db.write() as conn:
            # The named stores first, then the row, locked until the write commits (the order a store's
            # delete takes them in): a delete that detaches the store is not overwritten by what was read.
            await require_vector_stores(conn, project, named_vector_stores(req.tool_resources))
            row = await assistants.get_row(conn, project, assistant_id, lock=True)
            if row is None:
                raise NotFound("assistant", assistant_id)
            obj = dict(row.data)
            given = req.model_fields_set
            # An explicit null leaves the field as it was ("not set").
            for field in ("model", "name", "description", "instructions", "temperature", "top_p", "reasoning_effort"):
                value = getattr(req, field)
                if field in given and value is not None:
                    obj[field] = value
            if req.tools is not None:
                obj["tools"] = [tool_wire(t) for t in req.tools]
            if req.response_format is not None:
                obj["response_format"] = response_format_wire(req.response_format)
            if req.metadata is not None:
                obj["metadata"] = dict(req.metadata)
            if req.tool_resources is not None:
                obj["tool_resources"] = await tool_resources_wire(
                    conn, project, req.tool_resources, obj["tool_resources"]
                )
            await assistants.replace(conn, project, obj)
        return obj

    async def delete(self, project: str, assistant_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            if not await assistants.delete(conn, project, assistant_id):
                raise NotFound("assistant", assistant_id)
        return {"id": assistant_id, "object": "assistant.deleted", "deleted": True}
