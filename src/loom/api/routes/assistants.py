"""Assistants routes: adapters from HTTP to AssistantService."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from loom.schemas.assistants import AssistantCreate, AssistantModify
from loom.schemas.common import parse
from loom.services.common import list_params
from loom.web.auth import Project, require_beta
from loom.web.deps import AssistantServiceDep
from loom.web.http import JSON, json_body

router = APIRouter(dependencies=[Depends(require_beta)])


@router.post("/assistants")
async def create_assistant(request: Request, project: Project, service: AssistantServiceDep) -> JSON:
    req = parse(AssistantCreate, await json_body(request))
    return JSON(await service.create(project, req))


@router.get("/assistants")
async def list_assistants(request: Request, project: Project, service: AssistantServiceDep) -> JSON:
    page = await service.list(project, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/assistants/{assistant_id}")
async def get_assistant(request: Request, project: Project, service: AssistantServiceDep, assistant_id: str) -> JSON:
    return JSON(await service.get(project, assistant_id))


@router.post("/assistants/{assistant_id}")
async def modify_assistant(request: Request, project: Project, service: AssistantServiceDep, assistant_id: str) -> JSON:
    req = parse(AssistantModify, await json_body(request, optional=True))
    return JSON(await service.modify(project, assistant_id, req))


@router.delete("/assistants/{assistant_id}")
async def delete_assistant(request: Request, project: Project, service: AssistantServiceDep, assistant_id: str) -> JSON:
    return JSON(await service.delete(project, assistant_id))
