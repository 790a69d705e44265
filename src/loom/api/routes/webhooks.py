"""`/v1/loom/webhooks`: a project's webhook endpoints (Loom's extension; adapters to WebhookService)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from loom.api.auth import Project
from loom.api.http import JSON, json_body
from loom.schemas.common import parse
from loom.services.common import list_params
from loom.webhooks.schemas import EndpointCreate, EndpointUpdate, RotateSecret

router = APIRouter()


@router.post("/loom/webhooks")
async def create_endpoint(request: Request, project: Project) -> JSON:
    req = parse(EndpointCreate, await json_body(request))
    return JSON(await request.app.state.container.webhooks.create(project, req))


@router.get("/loom/webhooks")
async def list_endpoints(request: Request, project: Project) -> JSON:
    page = await request.app.state.container.webhooks.list(project, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/loom/webhooks/{endpoint_id}")
async def get_endpoint(request: Request, project: Project, endpoint_id: str) -> JSON:
    return JSON(await request.app.state.container.webhooks.get(project, endpoint_id))


@router.post("/loom/webhooks/{endpoint_id}")
async def update_endpoint(request: Request, project: Project, endpoint_id: str) -> JSON:
    req = parse(EndpointUpdate, await json_body(request, optional=True))
    return JSON(await request.app.state.container.webhooks.update(project, endpoint_id, req))


@router.delete("/loom/webhooks/{endpoint_id}")
async def delete_endpoint(request: Request, project: Project, endpoint_id: str) -> JSON:
    return JSON(await request.app.state.container.webhooks.delete(project, endpoint_id))


@router.post("/loom/webhooks/{endpoint_id}/rotate_secret")
async def rotate_secret(request: Request, project: Project, endpoint_id: str) -> JSON:
    req = parse(RotateSecret, await json_body(request, optional=True))
    service = request.app.state.container.webhooks
    return JSON(await service.rotate_secret(project, endpoint_id, keep_old=req.keep_old_secret_active_for_24_hours))


@router.get("/loom/webhooks/{endpoint_id}/deliveries")
async def list_deliveries(request: Request, project: Project, endpoint_id: str) -> JSON:
    limit = list_params(request.query_params).limit
    return JSON(await request.app.state.container.webhooks.deliveries(project, endpoint_id, limit))
