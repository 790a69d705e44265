"""Threads and messages: create/modify requests."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag

from loom.schemas.assistants import ToolResources, ToolResourcesUpdate
from loom.schemas.common import UNION_EXPECTATIONS, Metadata, Request, tagged

Detail = Literal["auto", "low", "high"]

# A message's text: at most 256,000 characters. The current spec states no bound, but OpenAI's
# CreateMessageRequest had `content: maxLength` (32,768, raised to 256,000 by openai/openai-openapi#219,
# "Increase assistants message content length limit"), the same figure as an assistant's `instructions`
# (spec `CreateAssistantRequest.instructions`, `maxLength: 256000`).
MAX_MESSAGE_CHARS = 256_000
# Messages in one thread-create (`messages`) or run-create (`additional_messages`): 32, the limit OpenAI
# enforced though its spec states none.
MAX_MESSAGES_PER_REQUEST = 32

MessageText = Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]


class TextPart(Request):
    type: Literal["text"]
    text: MessageText


class ImageFileRef(Request):
    file_id: str
    detail: Detail | None = None


class ImageFilePart(Request):
    type: Literal["image_file"]
    image_file: ImageFileRef


class ImageUrlRef(Request):
    url: Annotated[str, Field(pattern=r"^(https?://|data:)")]
    detail: Detail | None = None


class ImageUrlPart(Request):
    type: Literal["image_url"]
    image_url: ImageUrlRef


ContentPart = Annotated[
    Annotated[TextPart, Tag("~text")]
    | Annotated[ImageFilePart, Tag("~image_file")]
    | Annotated[ImageUrlPart, Tag("~image_url")],
    Discriminator(tagged()),
]


def _content_tag(value: object) -> str | None:
    if isinstance(value, str):
        return "~string"
    if isinstance(value, list):
        return "~array"
    return None


UNION_EXPECTATIONS["_content_tag"] = "one of a string or array of objects"


Content = Annotated[
    Annotated[MessageText, Tag("~string")]
    | Annotated[Annotated[list[ContentPart], Field(min_length=1)], Tag("~array")],
    Discriminator(_content_tag),
]


class AttachmentTool(Request):
    type: Literal["code_interpreter", "file_search"]


class Attachment(Request):
    file_id: str
    tools: list[AttachmentTool] = Field(default_factory=list)


class MessageCreate(Request):
    role: Literal["user", "assistant"]
    content: Content
    attachments: list[Attachment] | None = None
    metadata: Metadata = None


class MessageModify(Request):
    metadata: Metadata = None


class ThreadCreate(Request):
    messages: Annotated[list[MessageCreate], Field(max_length=MAX_MESSAGES_PER_REQUEST)] | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata = None


class ThreadModify(Request):
    tool_resources: ToolResourcesUpdate | None = None
    metadata: Metadata = None
