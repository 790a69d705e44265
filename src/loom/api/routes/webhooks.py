"""`/v1/loom/webhooks`: a project's webhook endpoints (Loom's extension; adapters to WebhookService)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from loom.schemas.common import parse
from loom.services.common import list_params
from loom.web.auth import Project
from loom.web.deps import WebhookServiceDep
from loom.web.http import JSON, json_body
from loom.webhooks.schemas import EndpointCreate, EndpointUpdate, RotateSecret

router = APIRouter()


@router.post("/loom/webhooks")
async def create_endpoint(request: Request, project: Project, webhooks: WebhookServiceDep) -> JSON:
    req = parse(EndpointCreate, await json_body(request))
    return JSON(await webhooks.create(project, req))


@router.get("/loom/webhooks")
async def list_endpoints(request: Request, project: Project, webhooks: WebhookServiceDep) -> JSON:
    page = await webhooks.list(project, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/loom/webhooks/{endpoint_id}")
async def get_endpoint(request: Request, project: Project, webhooks: WebhookServiceDep, endpoint_id: str) -> JSON:
    return JSON(await webhooks.get(project, endpoint_id))


@router.post("/loom/webhooks/{endpoint_id}")
async def update_endpoint(request: Request, project: Project, webhooks: WebhookServiceDep, endpoint_id: str) -> JSON:
    req = parse(EndpointUpdate, await json_body(request, optional=True))
    return JSON(await webhooks.update(project, endpoint_id, req))


@router.delete("/loom/webhooks/{endpoint_id}")
async def delete_endpoint(request: Request, project: Project, webhooks: WebhookServiceDep, endpoint_id: str) -> JSON:
    return JSON(await webhooks.delete(project, endpoint_id))


@router.post("/loom/webhooks/{endpoint_id}/rotate_secret")
async def rotate_secret(request: Request, project: Project, webhooks: WebhookServiceDep, endpoint_id: str) -> JSON:
    req = parse(RotateSecret, await json_body(request, optional=True))
    return JSON(await webhooks.rotate_secret(project, endpoint_id, keep_old=req.keep_old_secret_active_for_24_hours))


@router.get("/loom/webhooks/{endpoint_id}/deliveries")
async def list_deliveries(request: Request, project: Project, webhooks: WebhookServiceDep, endpoint_id: str) -> JSON:
    limit = list_params(request.query_params).limit
    return JSON(await webhooks.deliveries(project, endpoint_id, limit))
