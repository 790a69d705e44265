"""`GET /v1/models`: the model names configuration routes, and what each backend serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from loom.errors import NotFound
from loom.llm.routing import ModelRouter
from loom.web.auth import Project
from loom.web.deps import ModelRouterDep
from loom.web.http import JSON

router = APIRouter()


async def _models(router: ModelRouter) -> list[dict[str, Any]]:
    return [{"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by} for m in await router.list_models()]


@router.get("/models")
async def list_models(project: Project, models: ModelRouterDep) -> JSON:
    return JSON({"object": "list", "data": await _models(models)})


@router.get("/models/{model_id:path}")
async def get_model(project: Project, models: ModelRouterDep, model_id: str) -> JSON:
    for model in await _models(models):
        if model["id"] == model_id:
            return JSON(model)
    raise NotFound("model", model_id)
