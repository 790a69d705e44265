"""Threads and messages routes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from loom.schemas.common import parse
from loom.schemas.threads import MessageCreate, MessageModify, ThreadCreate, ThreadModify
from loom.services.common import list_params
from loom.web.auth import Project, require_beta
from loom.web.deps import ThreadServiceDep
from loom.web.http import JSON, json_body

router = APIRouter(dependencies=[Depends(require_beta)])


@router.post("/threads")
async def create_thread(request: Request, project: Project, service: ThreadServiceDep) -> JSON:
    req = parse(ThreadCreate, await json_body(request, optional=True))
    return JSON(await service.create(project, req))


@router.get("/threads/{thread_id}")
async def get_thread(request: Request, project: Project, service: ThreadServiceDep, thread_id: str) -> JSON:
    return JSON(await service.get(project, thread_id))


@router.post("/threads/{thread_id}")
async def modify_thread(request: Request, project: Project, service: ThreadServiceDep, thread_id: str) -> JSON:
    req = parse(ThreadModify, await json_body(request, optional=True))
    return JSON(await service.modify(project, thread_id, req))


@router.delete("/threads/{thread_id}")
async def delete_thread(request: Request, project: Project, service: ThreadServiceDep, thread_id: str) -> JSON:
    return JSON(await service.delete(project, thread_id))


@router.post("/threads/{thread_id}/messages")
async def create_message(request: Request, project: Project, service: ThreadServiceDep, thread_id: str) -> JSON:
    req = parse(MessageCreate, await json_body(request))
    return JSON(await service.create_message(project, thread_id, req))


@router.get("/threads/{thread_id}/messages")
async def list_messages(request: Request, project: Project, service: ThreadServiceDep, thread_id: str) -> JSON:
    params = list_params(request.query_params)
    page = await service.list_messages(project, thread_id, params, request.query_params.get("run_id"))
    return JSON(page.wire())


@router.get("/threads/{thread_id}/messages/{message_id}")
async def get_message(
    request: Request, project: Project, service: ThreadServiceDep, thread_id: str, message_id: str
) -> JSON:
    return JSON(await service.get_message(project, thread_id, message_id))


@router.post("/threads/{thread_id}/messages/{message_id}")
async def modify_message(
    request: Request, project: Project, service: ThreadServiceDep, thread_id: str, message_id: str
) -> JSON:
    req = parse(MessageModify, await json_body(request, optional=True))
    return JSON(await service.modify_message(project, thread_id, message_id, req))


@router.delete("/threads/{thread_id}/messages/{message_id}")
async def delete_message(
    request: Request, project: Project, service: ThreadServiceDep, thread_id: str, message_id: str
) -> JSON:
    return JSON(await service.delete_message(project, thread_id, message_id))
