"""The `ChatBackend` protocol: the run engine's only view of a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from loom.llm.context_windows import ServedWindow
from loom.llm.types import ChatChunk, ChatRequest


@runtime_checkable
class ChatBackend(Protocol):
    """A Chat Completions server.

        `stream_chat` is an async generator: iterate it for chunks. It raises `loom.llm.UpstreamError`
        (and nothing else, except `asyncio.CancelledError`) when the upstream fails; retries of transient
        failures happen inside, and only before the first chunk arrived. It ends only after a chunk with a
    finish reason: an answer cut off before one raises `UpstreamError` too. To stop early (run cancelled),
        close the generator, which closes the HTTP response:

            async with contextlib.aclosing(backend.stream_chat(request)) as chunks:
                async for chunk in chunks:
                    ...
    """

    @property
    def name(self) -> str:
        """The backend's name in configuration (for logs and `/v1/models` `owned_by`)."""
        ...

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...

    async def list_models(self) -> list[str]:
        """The model ids the server lists (`GET /models`); empty when it lists none or cannot be asked."""
        ...

    def served(self, model: str) -> bool:
        """Whether the server's last listing had this model (no request)."""
        ...

    async def context_window(self, model: str) -> ServedWindow | None:
        """The context window the server says it serves this model with; None when it does not say."""
        ...

    async def aclose(self) -> None:
        """Release connections (at shutdown)."""
        ...
