"""Model backends: the `ChatBackend` protocol, the OpenAI-compatible implementation, model routing."""

from loom.llm.accumulate import ChatAccumulator, collect
from loom.llm.backend import ChatBackend
from loom.llm.context_windows import DEFAULT_CONTEXT_WINDOW, known_context_window
from loom.llm.errors import UpstreamError, UpstreamErrorCode
from loom.llm.openai_backend import BackendConfig, OpenAIBackend
from loom.llm.routing import ConfigError, ModelInfo, ModelRoute, ModelRouter, Route
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
    "DEFAULT_CONTEXT_WINDOW",
    "BackendConfig",
    "ChatAccumulator",
    "ChatBackend",
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "ChatTool",
    "ConfigError",
    "FinishReason",
    "ModelInfo",
    "ModelRoute",
    "ModelRouter",
    "OpenAIBackend",
    "Route",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "UpstreamError",
    "UpstreamErrorCode",
    "Usage",
    "collect",
    "known_context_window",
]
