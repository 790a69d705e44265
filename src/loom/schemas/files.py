"""Uploads API requests (files themselves come as multipart forms)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from loom.schemas.common import Request


class ExpiresAfter(Request):
    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=2_592_000)]


class UploadCreate(Request):
    filename: str
    purpose: str
    bytes: Annotated[int, Field(ge=0)]
    mime_type: str
    expires_after: ExpiresAfter | None = None


class UploadComplete(Request):
    part_ids: list[str]
    md5: str | None = None
