"""Assemble streamed chunks into a whole assistant turn."""

from __future__ import annotations

from collections.abc import AsyncIterable

from loom.llm.types import ChatChunk, ChatResult, ToolCall, Usage


class ChatAccumulator:
    """Feed it every chunk (`add`), then read `result()`. Tool calls come out ordered by index."""

    def __init__(self) -> None:
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, tuple[list[str], list[str], list[str]]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def add(self, chunk: ChatChunk) -> None:
        if chunk.content:
            self._content.append(chunk.content)
        if chunk.refusal:
            self._refusal.append(chunk.refusal)
        for delta in chunk.tool_calls:
            ids, names, args = self._calls.setdefault(delta.index, ([], [], []))
            if delta.id and not ids:
                ids.append(delta.id)
            if delta.name:
                names.append(delta.name)
            if delta.arguments:
                args.append(delta.arguments)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage

    @property
    def content(self) -> str:
        return "".join(self._content)

    def result(self) -> ChatResult:
        calls = tuple(
            ToolCall(id="".join(ids), name="".join(names), arguments="".join(args))
            for _, (ids, names, args) in sorted(self._calls.items())
        )
        return ChatResult(
            content="".join(self._content),
            refusal="".join(self._refusal),
            tool_calls=calls,
            finish_reason=self.finish_reason,
            usage=self.usage,
        )


async def collect(chunks: AsyncIterable[ChatChunk]) -> ChatResult:
    """Read a whole stream into one `ChatResult` (for callers that do not need the deltas)."""
    acc = ChatAccumulator()
    async for chunk in chunks:
        acc.add(chunk)
    return acc.result()
