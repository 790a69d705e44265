"""Files and Uploads routes (no `OpenAI-Beta` header: these are not part of the Assistants beta)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from loom.api.multipart import FORM_OVERHEAD_BYTES, read_form
from loom.errors import PayloadTooLarge
from loom.services.common import list_params
from loom.web.auth import Project
from loom.web.deps import FileServiceDep, SettingsDep, UploadServiceDep
from loom.web.http import JSON, json_body

router = APIRouter()


def _check_length(request: Request, limit: int) -> None:
    """Refuse at once a body that says it is larger than any acceptable one (multipart adds little)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise PayloadTooLarge(
            f"File is too large: the maximum size is {limit} bytes ({limit // (1024 * 1024)} MB).",
            param="file",
            code="file_too_large",
        )


@router.post("/files")
async def create_file(request: Request, project: Project, files: FileServiceDep, settings: SettingsDep) -> JSON:
    limit = settings.max_file_bytes
    _check_length(request, limit)
    form = await read_form(
        request.headers.get("content-type"),
        request.stream(),
        file_fields={"file"},
        max_file_bytes=limit,
        temp_path=files.new_temp,
    )
    return JSON(await files.create_from_form(project, form))


@router.get("/files")
async def list_files(request: Request, project: Project, files: FileServiceDep) -> JSON:
    params = list_params(request.query_params, max_limit=10_000, default_limit=10_000, allow_before=False)
    page = await files.list(project, params, request.query_params.get("purpose"))
    return JSON(page.wire())


@router.get("/files/{file_id}")
async def get_file(request: Request, project: Project, files: FileServiceDep, file_id: str) -> JSON:
    return JSON(await files.get(project, file_id))


@router.delete("/files/{file_id}")
async def delete_file(request: Request, project: Project, files: FileServiceDep, file_id: str) -> JSON:
    return JSON(await files.delete(project, file_id))


@router.get("/files/{file_id}/content")
async def file_content(request: Request, project: Project, files: FileServiceDep, file_id: str) -> StreamingResponse:
    # Opened here, so that a missing File or a store that is down is an error response, not a cut stream.
    reader = await files.content(project, file_id)
    return StreamingResponse(
        reader,
        media_type="application/octet-stream",
        headers={"content-length": str(reader.size)},
        background=BackgroundTask(reader.aclose),
    )


@router.post("/uploads")
async def create_upload(request: Request, project: Project, uploads: UploadServiceDep, settings: SettingsDep) -> JSON:
    body = await json_body(request)
    return JSON(await uploads.create_upload(project, body, settings.max_upload_bytes))


@router.post("/uploads/{upload_id}/parts")
async def add_upload_part(
    request: Request,
    project: Project,
    uploads: UploadServiceDep,
    settings: SettingsDep,
    files: FileServiceDep,
    upload_id: str,
) -> JSON:
    limit = settings.max_upload_part_bytes
    _check_length(request, limit)
    form = await read_form(
        request.headers.get("content-type"),
        request.stream(),
        file_fields={"data"},
        max_file_bytes=limit,
        temp_path=files.new_temp,
    )
    return JSON(await uploads.add_part(project, upload_id, form))


@router.post("/uploads/{upload_id}/complete")
async def complete_upload(request: Request, project: Project, uploads: UploadServiceDep, upload_id: str) -> JSON:
    body = await json_body(request)
    return JSON(await uploads.complete_upload(project, upload_id, body))


@router.post("/uploads/{upload_id}/cancel")
async def cancel_upload(request: Request, project: Project, uploads: UploadServiceDep, upload_id: str) -> JSON:
    return JSON(await uploads.cancel_upload(project, upload_id))
