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
    # A MIME type is at most 127 + 1 + 127 characters (RFC 6838 §4.2), parameters aside; the spec states
    # no bound (an unbounded one was stored as sent).
    mime_type: Annotated[str, Field(max_length=255)]
    expires_after: ExpiresAfter | None = None


class UploadComplete(Request):
    part_ids: list[str]
    md5: str | None = None
