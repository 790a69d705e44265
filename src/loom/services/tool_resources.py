"""`tool_resources` of assistants and threads: the files and stores they name checked, as OpenAI echoed them.

Its own module: it sits above both `common` (the checks) and `vector_store_rows` (the create-a-store
helper), which itself checks files with `common`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loom.schemas.assistants import ToolResources, ToolResourcesUpdate
from loom.services.common import require_files, require_vector_stores
from loom.services.vector_store_rows import create_helper_store


async def tool_resources_wire(
    conn: AsyncConnection,
    project: str,
    resources: ToolResources | ToolResourcesUpdate | None,
    current: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate referenced files and stores; return tool_resources as OpenAI echoed them.

    On modify, each given part replaces its counterpart (code_interpreter.file_ids overrides the list);
    a `file_search` without `vector_store_ids` keeps the stores there are.
    """
    wire: dict[str, Any] = dict(current or {})
    if resources is None:
        return wire
    if resources.code_interpreter is not None:
        await require_files(conn, project, resources.code_interpreter.file_ids)
        wire["code_interpreter"] = {"file_ids": list(resources.code_interpreter.file_ids)}
    fs = resources.file_search
    helpers = getattr(fs, "vector_stores", None) or []
    if fs is not None and fs.vector_store_ids is None and not helpers and "file_search" in wire:
        # `file_search: {}` names no stores: the current ones stay (the spec gives `vector_store_ids` no
        # default, unlike `code_interpreter.file_ids`; Agency Swarm sends this on every agent reload).
        fs = None
    if fs is not None:
        ids = list(fs.vector_store_ids or [])
        await require_vector_stores(conn, project, ids)
        if helpers:
            # The create-a-store helper: a new store with these files (ingested in the background).
            for i, helper in enumerate(helpers):
                ids.append(
                    await create_helper_store(conn, project, helper, f"tool_resources.file_search.vector_stores[{i}]")
                )
        wire["file_search"] = {"vector_store_ids": ids}
    return wire
