"""Assistants routes: adapters from HTTP to AssistantService."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from loom.api.auth import Project, require_beta
from loom.api.http import JSON, json_body
from loom.schemas.assistants import AssistantCreate, AssistantModify
from loom.schemas.common import parse
from loom.services.common import list_params

router = APIRouter(dependencies=[Depends(require_beta)])


@router.post("/assistants")
async def create_assistant(request: Request, project: Project) -> JSON:
    req = parse(AssistantCreate, await json_body(request))
    return JSON(await request.app.state.container.assistants.create(project, req))


@router.get("/assistants")
async def list_assistants(request: Request, project: Project) -> JSON:
    page = await request.app.state.container.assistants.list(project, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/assistants/{assistant_id}")
async def get_assistant(request: Request, project: Project, assistant_id: str) -> JSON:
    return JSON(await request.app.state.container.assistants.get(project, assistant_id))


@router.post("/assistants/{assistant_id}")
async def modify_assistant(request: Request, project: Project, assistant_id: str) -> JSON:
    req = parse(AssistantModify, await json_body(request, optional=True))
    return JSON(await request.app.state.container.assistants.modify(project, assistant_id, req))


@router.delete("/assistants/{assistant_id}")
async def delete_assistant(request: Request, project: Project, assistant_id: str) -> JSON:
    return JSON(await request.app.state.container.assistants.delete(project, assistant_id))
