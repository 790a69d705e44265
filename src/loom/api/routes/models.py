"""`GET /v1/models`: the model names configuration routes, and what each backend serves."""

from __future__ import annotations

from fastapi import APIRouter, Request

from loom.api.auth import Project
from loom.api.http import JSON
from loom.errors import NotFound

router = APIRouter()


@router.get("/models")
async def list_models(request: Request, project: Project) -> JSON:
    return JSON({"object": "list", "data": await request.app.state.container.model_list()})


@router.get("/models/{model_id:path}")
async def get_model(request: Request, project: Project, model_id: str) -> JSON:
    for model in await request.app.state.container.model_list():
        if model["id"] == model_id:
            return JSON(model)
    raise NotFound("model", model_id)
