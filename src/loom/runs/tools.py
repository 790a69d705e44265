"""Tools that run inside Loom (file search, code interpreter), as the engine sees them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loom.llm.types import ChatTool, ToolCall

# Sends one tool-call delta of the step (`{"index", "id"?, "type", <type>: {...}}`) to stream subscribers.
EmitDelta = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ToolContext:
    project: str
    run: dict[str, Any]
    assistant: dict[str, Any]
    thread: dict[str, Any]
    include_content: bool = False


@dataclass
class ToolResult:
    """`output` goes back to the model; `details` is the step's tool-call body (`{type: {...}}`)."""

    output: str
    details: dict[str, Any]
    # Things the final assistant message should carry (e.g. file citations, images), by tool.
    extras: dict[str, Any] = field(default_factory=dict)


class ServerTool(Protocol):
    """A tool of OpenAI's that Loom executes itself. `type` is the Assistants tool type."""

    type: str
    # The function name the model sees.
    function_name: str

    def chat_tool(self, ctx: ToolContext, tool: dict[str, Any]) -> ChatTool: ...

    async def execute(
        self, ctx: ToolContext, tool: dict[str, Any], call: ToolCall, index: int, emit: EmitDelta
    ) -> ToolResult:
        """Run one call. Emit at least one delta (the first carrying the call id) before returning."""
        ...
