"""What a Chat Completions server streams, in Loom's terms: chunks (`chat.completion.chunk` as decoded
JSON) become `ChatChunk`s, every server's tool-call deltas are made to look like OpenAI's, and a whole
(non-streamed) answer is replayed as the chunks a stream of it would have been.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import openai

from loom.ids import new_id
from loom.llm.types import ChatChunk, ToolCallDelta, Usage

__all__ = ["OpenStream", "StreamEnded", "ToolCallNormalizer", "completion_chunks", "parse_chunk"]


def _get(obj: Any, key: str) -> Any:
    """A field of a decoded JSON object; None when absent or when `obj` is not an object."""
    return obj.get(key) if isinstance(obj, Mapping) else None


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    prompt = int(_get(raw, "prompt_tokens") or 0)
    completion = int(_get(raw, "completion_tokens") or 0)
    total = int(_get(raw, "total_tokens") or 0) or prompt + completion
    cached = _get(_get(raw, "prompt_tokens_details"), "cached_tokens")
    reasoning = _get(_get(raw, "completion_tokens_details"), "reasoning_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        cached_tokens=int(cached) if cached is not None else None,
        reasoning_tokens=int(reasoning) if reasoning is not None else None,
    )


class ToolCallNormalizer:
    """Makes every server's tool-call deltas look like OpenAI's: id and name once per call, a stable
    index per call. Handles servers that repeat the id/name on every delta, omit `index`, omit the id,
    or reuse index 0 for each of several parallel calls."""

    def __init__(self) -> None:
        self._ours: dict[int, int] = {}  # server index -> our index
        self._ids: list[str] = []
        self._named: set[int] = set()

    def delta(self, position: int, raw: Any) -> ToolCallDelta:
        server_index = _get(raw, "index")
        if not isinstance(server_index, int):
            server_index = position
        call_id = _get(raw, "id") or None
        function = _get(raw, "function")
        name = _get(function, "name") or None
        arguments = _get(function, "arguments") or ""

        ours = self._ours.get(server_index)
        if ours is None or (call_id is not None and call_id != self._ids[ours]):
            ours = len(self._ids)
            self._ours[server_index] = ours
            self._ids.append(call_id or new_id("call"))
            emit_id: str | None = self._ids[ours]
        else:
            emit_id = None
        emit_name = None
        if name is not None and ours not in self._named:
            self._named.add(ours)
            emit_name = name
        return ToolCallDelta(index=ours, id=emit_id, name=emit_name, arguments=str(arguments))


def parse_chunk(raw: object, calls: ToolCallNormalizer) -> ChatChunk | None:
    """One streamed chunk (`chat.completion.chunk` as decoded JSON) in Loom's terms; None if empty."""
    usage = _usage(_get(raw, "usage"))
    choices = _get(raw, "choices")
    content = refusal = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    if isinstance(choices, list) and choices:
        choice = choices[0]
        delta = _get(choice, "delta")
        content = str(_get(delta, "content") or "")
        refusal = str(_get(delta, "refusal") or "")
        raw_calls = _get(delta, "tool_calls")
        if isinstance(raw_calls, list):
            tool_calls = tuple(calls.delta(i, tc) for i, tc in enumerate(raw_calls))
        finish_reason = _get(choice, "finish_reason") or None
    if not (content or refusal or tool_calls or finish_reason or usage):
        return None
    return ChatChunk(
        content=content,
        refusal=refusal,
        tool_calls=tool_calls,
        finish_reason=finish_reason,
        usage=usage,
    )


def completion_chunks(raw: object, calls: ToolCallNormalizer) -> list[ChatChunk]:
    """A whole (non-streamed) `chat.completion` as the chunks a stream of it would have been."""
    choices = _get(raw, "choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = _get(choice, "message")
    chunks: list[ChatChunk] = []
    content = str(_get(message, "content") or "")
    refusal = str(_get(message, "refusal") or "")
    if content or refusal:
        chunks.append(ChatChunk(content=content, refusal=refusal))
    raw_calls = _get(message, "tool_calls")
    if isinstance(raw_calls, list) and raw_calls:
        deltas = [calls.delta(i, {**tc, "index": i}) for i, tc in enumerate(raw_calls) if isinstance(tc, Mapping)]
        chunks.append(ChatChunk(tool_calls=tuple(deltas)))
    finish_reason = _get(choice, "finish_reason") or None
    usage = _usage(_get(raw, "usage"))
    if finish_reason is not None or usage is not None:
        chunks.append(ChatChunk(finish_reason=finish_reason, usage=usage))
    return chunks


class StreamEnded(Exception):
    """The stream ended before the answer did (no finish reason)."""


class OpenStream:
    """A response being read: the SDK stream (None for a non-streamed call), its chunks so far, and
    whether a finish reason was among them."""

    def __init__(self, stream: openai.AsyncStream[object] | None) -> None:
        self.stream = stream
        self.iterator: AsyncIterator[object] | None = stream.__aiter__() if stream is not None else None
        self.calls = ToolCallNormalizer()
        # Read but not yet given to the caller: the first meaningful chunk (or a whole non-streamed answer).
        self.ready: list[ChatChunk] = []
        self.finished = False

    def take(self, chunk: ChatChunk) -> None:
        self.ready.append(chunk)
        if chunk.finish_reason is not None:
            self.finished = True

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
