"""Typed route dependencies: a route names the service it needs (`runs: RunServiceDep`) and FastAPI hands
it the container's, instead of the route reaching into `request.app.state.container` (typed `Any`).

`container_of` is the one place that reads the app's state; `loom.api.app.create_app` puts it there.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loom.config import Settings
from loom.container import Container
from loom.llm.routing import ModelRouter
from loom.services.assistants import AssistantService
from loom.services.files import FileService
from loom.services.keys import KeyRing
from loom.services.runs import RunService
from loom.services.threads import ThreadService
from loom.services.uploads import UploadService
from loom.services.vector_stores import VectorStoreService
from loom.store.blobstore import BlobStorage
from loom.store.db import Database
from loom.webhooks.service import WebhookService


def container_of(request: Request) -> Container:
    container = request.app.state.container
    if not isinstance(container, Container):
        raise TypeError("the app's state holds no loom Container (apps are made by loom.api.app.create_app)")
    return container


# Dependencies are coroutines: FastAPI runs a plain function's in a worker thread.


async def get_assistant_service(request: Request) -> AssistantService:
    return container_of(request).assistants


async def get_thread_service(request: Request) -> ThreadService:
    return container_of(request).threads


async def get_run_service(request: Request) -> RunService:
    return container_of(request).runs


async def get_file_service(request: Request) -> FileService:
    return container_of(request).files


async def get_upload_service(request: Request) -> UploadService:
    return container_of(request).uploads


async def get_vector_store_service(request: Request) -> VectorStoreService:
    return container_of(request).vector_stores


async def get_webhook_service(request: Request) -> WebhookService:
    return container_of(request).webhooks


async def get_key_ring(request: Request) -> KeyRing:
    return container_of(request).keys


async def get_model_router(request: Request) -> ModelRouter:
    return container_of(request).router


async def get_settings(request: Request) -> Settings:
    return container_of(request).settings


async def get_blobs(request: Request) -> BlobStorage:
    return container_of(request).blobs


async def get_database(request: Request) -> Database:
    return container_of(request).db


AssistantServiceDep = Annotated[AssistantService, Depends(get_assistant_service)]
ThreadServiceDep = Annotated[ThreadService, Depends(get_thread_service)]
RunServiceDep = Annotated[RunService, Depends(get_run_service)]
FileServiceDep = Annotated[FileService, Depends(get_file_service)]
UploadServiceDep = Annotated[UploadService, Depends(get_upload_service)]
VectorStoreServiceDep = Annotated[VectorStoreService, Depends(get_vector_store_service)]
WebhookServiceDep = Annotated[WebhookService, Depends(get_webhook_service)]
KeyRingDep = Annotated[KeyRing, Depends(get_key_ring)]
ModelRouterDep = Annotated[ModelRouter, Depends(get_model_router)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BlobsDep = Annotated[BlobStorage, Depends(get_blobs)]
DatabaseDep = Annotated[Database, Depends(get_database)]
