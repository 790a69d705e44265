"""What one model call has produced so far, and the shapes of the deltas streamed while it grows."""

from __future__ import annotations

import time
from typing import Any

from loom.llm.types import Usage
from loom.runs.tools import ArgumentStream


class Turn:
    """What one model call has produced so far."""

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.message_step: dict[str, Any] | None = None
        self.text = ""
        self.refusal = ""
        self.tool_step: dict[str, Any] | None = None
        # upstream index → (our call id, name, argument fragments)
        self.calls: dict[int, tuple[str, str, list[str]]] = {}
        # upstream index → the argument stream of a server tool that shows its input as it is written
        # (a `StreamsArguments` tool: the code interpreter).
        self.arg_streams: dict[int, ArgumentStream] = {}
        # position → tool-call deltas held back until the calls before it have run
        # (see `AssistantOutput.call_delta`).
        self.held: dict[int, list[dict[str, Any]]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.flushed_at = time.monotonic()

    def content(self, annotations: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The message's content blocks: its text (with `annotations`), then its refusal."""
        content: list[dict[str, Any]] = []
        if self.text:
            content.append({"type": "text", "text": {"value": self.text, "annotations": annotations or []}})
        if self.refusal:
            content.append({"type": "refusal", "refusal": self.refusal})
        return content

    def estimate_usage(self, prompt_tokens: int, max_tokens: int | None) -> Usage:
        """Usage for a server that sent none, counted with OpenAI's tokenizer. A server that stopped at
        the cap (`length`) wrote exactly `max_tokens`, and never more than that."""
        from loom import tokens

        completion = tokens.count_tokens(self.text + self.refusal, "gpt-4o")
        for _, name, parts in self.calls.values():
            completion += tokens.count_tokens(name + "".join(parts), "gpt-4o")
        if max_tokens is not None:
            completion = max_tokens if self.finish_reason == "length" else min(completion, max_tokens)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


def message_delta(message_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A `thread.message.delta` event's data with these content parts."""
    return {"id": message_id, "object": "thread.message.delta", "delta": {"content": parts}}


def step_delta(step_id: str, call: dict[str, Any]) -> dict[str, Any]:
    """A `thread.run.step.delta` event's data for one tool call's delta."""
    return {
        "id": step_id,
        "object": "thread.run.step.delta",
        "delta": {"step_details": {"type": "tool_calls", "tool_calls": [call]}},
    }
