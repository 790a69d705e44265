"""Vector stores routes: adapters from HTTP to VectorStoreService (`OpenAI-Beta` optional, CONFORMANCE §1.2).

`client.vector_stores` (new SDKs) and `client.beta.vector_stores` (openai-python ≤ 1.65) send the same HTTP.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from loom.services.common import list_params
from loom.services.vector_stores import VectorStoreService
from loom.web.auth import Project, optional_beta
from loom.web.deps import VectorStoreServiceDep
from loom.web.http import JSON, json_body

router = APIRouter(dependencies=[Depends(optional_beta)])


def _polled(service: VectorStoreService, body: dict[str, object]) -> JSON:
    """A response the SDK's poll helpers read: tell them how long to wait before the next GET."""
    return JSON(body, headers={"openai-poll-after-ms": str(service.poll_after_ms)})


@router.post("/vector_stores")
async def create_vector_store(request: Request, project: Project, service: VectorStoreServiceDep) -> JSON:
    return JSON(await service.create(project, await json_body(request, optional=True)))


@router.get("/vector_stores")
async def list_vector_stores(request: Request, project: Project, service: VectorStoreServiceDep) -> JSON:
    page = await service.list(project, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/vector_stores/{vector_store_id}")
async def get_vector_store(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    return JSON(await service.get(project, vector_store_id))


@router.post("/vector_stores/{vector_store_id}")
async def modify_vector_store(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    body = await json_body(request, optional=True)
    return JSON(await service.modify(project, vector_store_id, body))


@router.delete("/vector_stores/{vector_store_id}")
async def delete_vector_store(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    return JSON(await service.delete(project, vector_store_id))


@router.post("/vector_stores/{vector_store_id}/search")
async def search_vector_store(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    return JSON(await service.search(project, vector_store_id, await json_body(request)))


@router.post("/vector_stores/{vector_store_id}/files")
async def create_vector_store_file(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    return JSON(await service.create_file(project, vector_store_id, await json_body(request)))


@router.get("/vector_stores/{vector_store_id}/files")
async def list_vector_store_files(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    params = list_params(request.query_params)
    status = request.query_params.get("filter")
    return JSON((await service.list_files(project, vector_store_id, params, status)).wire())


@router.get("/vector_stores/{vector_store_id}/files/{file_id}")
async def get_vector_store_file(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, file_id: str
) -> JSON:
    return _polled(service, await service.get_file(project, vector_store_id, file_id))


@router.post("/vector_stores/{vector_store_id}/files/{file_id}")
async def update_vector_store_file(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, file_id: str
) -> JSON:
    body = await json_body(request)
    return JSON(await service.update_file(project, vector_store_id, file_id, body))


@router.delete("/vector_stores/{vector_store_id}/files/{file_id}")
async def delete_vector_store_file(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, file_id: str
) -> JSON:
    return JSON(await service.delete_file(project, vector_store_id, file_id))


@router.get("/vector_stores/{vector_store_id}/files/{file_id}/content")
async def vector_store_file_content(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, file_id: str
) -> JSON:
    return JSON(await service.file_content(project, vector_store_id, file_id))


@router.post("/vector_stores/{vector_store_id}/file_batches")
async def create_file_batch(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str
) -> JSON:
    return JSON(await service.create_batch(project, vector_store_id, await json_body(request)))


@router.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}")
async def get_file_batch(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, batch_id: str
) -> JSON:
    return _polled(service, await service.get_batch(project, vector_store_id, batch_id))


@router.post("/vector_stores/{vector_store_id}/file_batches/{batch_id}/cancel")
async def cancel_file_batch(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, batch_id: str
) -> JSON:
    return JSON(await service.cancel_batch(project, vector_store_id, batch_id))


@router.get("/vector_stores/{vector_store_id}/file_batches/{batch_id}/files")
async def list_file_batch_files(
    request: Request, project: Project, service: VectorStoreServiceDep, vector_store_id: str, batch_id: str
) -> JSON:
    params = list_params(request.query_params)
    status = request.query_params.get("filter")
    page = await service.list_files(project, vector_store_id, params, status, batch_id)
    return JSON(page.wire())
