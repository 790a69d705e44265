"""Model backends: the `ChatBackend` protocol, the OpenAI-compatible implementation, model routing."""

from loom.llm.accumulate import ChatAccumulator, collect
from loom.llm.backend import ChatBackend
from loom.llm.errors import UpstreamError, UpstreamErrorCode
from loom.llm.types import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    ChatTool,
    FinishReason,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

__all__ = [
    "ChatAccumulator",
    "ChatBackend",
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "ChatTool",
    "FinishReason",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "UpstreamError",
    "UpstreamErrorCode",
    "Usage",
    "collect",
]
