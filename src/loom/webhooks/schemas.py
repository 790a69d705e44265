"""Requests of the endpoints API. The objects answered follow openai-python's `WebhookEndpoint`
(`object: "webhook_endpoint"`, `signing_secret` only at creation and rotation) plus Loom's `enabled`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from loom.schemas.common import Request

EventType = Literal[
    "thread.run.requires_action",
    "thread.run.completed",
    "thread.run.failed",
    "thread.run.cancelled",
    "thread.run.expired",
    "thread.run.incomplete",
    "vector_store.file.completed",
    "vector_store.file.failed",
    "vector_store.file_batch.completed",
]
Url = Annotated[str, Field(min_length=1, max_length=2048)]
EventTypes = Annotated[list[EventType], Field(min_length=1, max_length=20)]
Name = Annotated[str, Field(max_length=256)]


class EndpointCreate(Request):
    url: Url
    event_types: EventTypes
    name: Name = ""
    enabled: bool = True


class EndpointUpdate(Request):
    url: Url | None = None
    event_types: EventTypes | None = None
    name: Name | None = None
    enabled: bool | None = None


class RotateSecret(Request):
    keep_old_secret_active_for_24_hours: bool = False
