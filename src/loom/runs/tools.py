"""Tools that run inside Loom (file search, code interpreter), as the engine sees them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from loom.llm.types import ChatTool, ToolCall

# Sends one tool-call delta of the step (`{"index", "id"?, "type", <type>: {...}}`) to stream subscribers.
EmitDelta = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ToolContext:
    project: str
    run: dict[str, Any]
    assistant: dict[str, Any]
    thread: dict[str, Any]
    # The citations the stored run had when this execution started (`RunState.citations`, as JSON).
    cited: Sequence[dict[str, Any]] = ()
    # What tools remember between their calls during this execution of the run (gone with the
    # executor): anything that must outlive it is read back from the stored run.
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Citation:
    """Where the model's answer quotes `text` (a marker like `【4:0†source】` or a `sandbox:/mnt/data/x`
    link), the message gets an annotation of `kind` (`file_citation` or `file_path`) naming `file_id`."""

    kind: str
    text: str
    file_id: str


@dataclass
class ToolResult:
    """`output` goes back to the model; `details` is the step's tool-call body (`{type: {...}}`)."""

    output: str
    details: dict[str, Any]
    # What the next assistant message should carry: annotations for text it quotes, images to show.
    citations: list[Citation] = field(default_factory=list)
    image_file_ids: list[str] = field(default_factory=list)


class ServerTool(Protocol):
    """A tool of OpenAI's that Loom executes itself. `type` is the Assistants tool type."""

    type: str
    # The function name the model sees.
    function_name: str
    # Whether a run's cancel may stop `execute` midway (a search may; code in a kernel runs to its own
    # time limit, so the session is never left mid-execution).
    interruptible: bool

    def chat_tool(self, ctx: ToolContext, tool: dict[str, Any]) -> ChatTool: ...

    async def execute(
        self, ctx: ToolContext, tool: dict[str, Any], call: ToolCall, index: int, emit: EmitDelta
    ) -> ToolResult:
        """Run one call. Emit at least one delta (the first carrying the call id) before returning."""
        ...


class ArgumentStream(Protocol):
    """Shows a server tool's call while the model writes its arguments: each method returns a
    tool-call delta (without `index`) or None when there is nothing new to show."""

    def opening(self) -> dict[str, Any]: ...

    def feed(self, fragment: str) -> dict[str, Any] | None: ...

    def close(self, arguments: str) -> dict[str, Any] | None: ...


@runtime_checkable
class LinksFiles(Protocol):
    """A server tool whose outputs become Files only when the answer links them (code interpreter:
    `sandbox:/mnt/data/x`). Called with each assistant message's text before it is completed; returns
    citations for the links it made Files of (none for a text in `known`)."""

    async def link_files(self, ctx: ToolContext, text: str, known: set[str]) -> list[Citation]: ...


@runtime_checkable
class StreamsArguments(Protocol):
    """A server tool whose input is streamed as the model writes it (code interpreter); its `execute`
    then does not show the input again."""

    def argument_stream(self, call_id: str) -> ArgumentStream: ...
