"""What goes to a Chat Completions server and what comes back, independent of any SDK."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

# A message in Chat Completions format, e.g. {"role": "user", "content": "hi"}, or with image parts
# ({"type": "image_url", "image_url": {"url": ...}}), assistant `tool_calls`, or {"role": "tool",
# "tool_call_id": ..., "content": ...}. Passed to the upstream as-is.
ChatMessage: TypeAlias = dict[str, Any]
# A tool in Chat Completions format: {"type": "function", "function": {"name", "description", "parameters"}}.
ChatTool: TypeAlias = dict[str, Any]
# "none" | "auto" | "required" | {"type": "function", "function": {"name": ...}}
ToolChoice: TypeAlias = Literal["none", "auto", "required"] | dict[str, Any]

# The values servers send in practice; anything else is passed through as a plain string.
FinishReason: TypeAlias = str  # "stop" | "length" | "tool_calls" | "content_filter" | "function_call"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One streamed Chat Completions call.

    `model` is the upstream's own model name (after routing). `max_tokens` is sent as
    `max_completion_tokens` (or `max_tokens` for backends configured so). None means "not sent".
    """

    model: str
    messages: list[ChatMessage]
    tools: list[ChatTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # {"type": "text"} | {"type": "json_object"} | {"type": "json_schema", "json_schema": {...}}
    response_format: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    # Extra JSON fields merged into the request body (server-specific knobs); rarely needed.
    extra_body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one tool call. `id` and `name` arrive once (on the call's first delta), then only
    `arguments` fragments follow; concatenate fragments per `index`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One streamed delta. Any field may be empty; usage usually comes alone in the last chunk
    (and never, from servers that ignore `stream_options.include_usage`)."""

    content: str = ""
    refusal: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, as assembled by `ChatAccumulator`."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole assistant turn, assembled from its chunks."""

    content: str = ""
    refusal: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
