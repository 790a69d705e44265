"""What the model is sent: instructions, the thread's messages, this run's own tool exchanges, truncation."""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loom import tokens
from loom.llm.types import ChatMessage, ChatTool
from loom.records import RunStepRecord

# Per-message framing tokens in Chat Completions (role, separators): OpenAI's cookbook figure.
_MESSAGE_OVERHEAD = 4
_IMAGE_TOKENS = 765

FileReader = Callable[[str], Awaitable[tuple[str, bytes] | None]]


@dataclass
class Prompt:
    messages: list[ChatMessage]
    model: str
    tools: list[ChatTool]
    # True when `max_prompt_tokens` could not be met even after truncation.
    over_budget: bool = False
    # The prompt's size when truncation had to count it; otherwise counted on first use.
    counted: int | None = None

    @property
    def tokens(self) -> int:
        if self.counted is None:
            self.counted = (
                sum(count_message(m, self.model) for m in self.messages) + count_tools(self.tools, self.model) + 3
            )
        return self.counted


def _text_of(content: list[dict[str, Any]]) -> str:
    return "".join(p["text"]["value"] for p in content if p.get("type") == "text")


async def _user_content(content: list[dict[str, Any]], read_file: FileReader) -> str | list[dict[str, Any]]:
    if all(p.get("type") == "text" for p in content):
        return _text_of(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": part["text"]["value"]})
        elif kind == "image_url":
            parts.append({"type": "image_url", "image_url": dict(part["image_url"])})
        elif kind == "image_file":
            found = await read_file(part["image_file"]["file_id"])
            if found is None:
                continue
            name, data = found
            mime = mimetypes.guess_type(name)[0] or "image/png"
            url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
            parts.append(
                {"type": "image_url", "image_url": {"url": url, "detail": part["image_file"].get("detail", "auto")}}
            )
    return parts


async def thread_history(messages: list[dict[str, Any]], read_file: FileReader) -> list[ChatMessage]:
    """The thread's messages in Chat Completions form (oldest first)."""
    history: list[ChatMessage] = []
    for message in messages:
        if message["role"] == "user":
            history.append({"role": "user", "content": await _user_content(message["content"], read_file)})
        else:
            text = _text_of(message["content"])
            if text:
                history.append({"role": "assistant", "content": text})
    return history


def run_transcript(steps: list[RunStepRecord], messages_by_id: dict[str, dict[str, Any]]) -> list[ChatMessage]:
    """This run's own turns so far: its messages and tool calls with their outputs, in step order. Only
    completed steps count: a turn stopped mid-way (a replica's drain handed the run over) was not said."""
    transcript: list[ChatMessage] = []
    for step in steps:
        if step.data["status"] != "completed":
            continue
        details = step.data["step_details"]
        if details["type"] == "message_creation":
            message = messages_by_id.get(details["message_creation"]["message_id"])
            if message is not None and _text_of(message["content"]):
                transcript.append({"role": "assistant", "content": _text_of(message["content"])})
            continue
        private = step.state.calls
        calls = [c for c in details["tool_calls"] if c["id"] in private]
        if not calls:
            continue
        transcript.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": private[c["id"]].name, "arguments": private[c["id"]].arguments},
                    }
                    for c in calls
                ],
            }
        )
        for c in calls:
            transcript.append({"role": "tool", "tool_call_id": c["id"], "content": private[c["id"]].output or ""})
    return transcript


def count_message(message: ChatMessage, model: str) -> int:
    total = _MESSAGE_OVERHEAD
    content = message.get("content")
    if isinstance(content, str):
        total += tokens.count_tokens(content, model)
    elif isinstance(content, list):
        for part in content:
            if part.get("type") == "text":
                total += tokens.count_tokens(part["text"], model)
            else:
                total += _IMAGE_TOKENS
    for call in message.get("tool_calls") or []:
        total += tokens.count_tokens(call["function"]["name"] + call["function"]["arguments"], model) + 3
    return total


def count_tools(tools: list[ChatTool], model: str) -> int:
    return tokens.count_tokens(json.dumps(tools), model) if tools else 0


def _utf8(text: str) -> int:
    return tokens.utf8_size(text)


def bound_message(message: ChatMessage) -> int:
    """An upper bound of `count_message` with no tokenizer: a BPE token covers at least one byte."""
    total = _MESSAGE_OVERHEAD
    content = message.get("content")
    if isinstance(content, str):
        total += _utf8(content)
    elif isinstance(content, list):
        for part in content:
            total += _utf8(part["text"]) if part.get("type") == "text" else _IMAGE_TOKENS
    for call in message.get("tool_calls") or []:
        total += _utf8(call["function"]["name"] + call["function"]["arguments"]) + 3
    return total


def prompt_limit(context_window: int, completion_reserve: int, max_prompt_tokens: int | None) -> int:
    """The most tokens a prompt may take: the window less room for the reply, and `max_prompt_tokens`."""
    budget = context_window - completion_reserve
    return budget if max_prompt_tokens is None else min(budget, max_prompt_tokens)


def history_budget(
    model: str, instructions: str, transcript: list[ChatMessage], tools: list[ChatTool], limit: int
) -> int:
    """What is left of `limit` for the thread's messages once the instructions, the run's own turns and
    the tools are counted (a memory strategy's budget)."""
    system: list[ChatMessage] = [{"role": "system", "content": instructions}] if instructions else []
    fixed = sum(count_message(m, model) for m in system + transcript) + count_tools(tools, model) + 3
    return max(limit - fixed, 0)


def build_prompt(
    *,
    model: str,
    instructions: str,
    history: list[ChatMessage],
    transcript: list[ChatMessage],
    tools: list[ChatTool],
    truncation: dict[str, Any],
    context_window: int,
    max_prompt_tokens: int | None,
    completion_reserve: int,
) -> Prompt:
    """Fit the prompt: `last_messages: n` keeps the n newest thread messages; `auto` drops the oldest
    until the prompt fits the model's context window (less room for the reply) and `max_prompt_tokens`."""
    if truncation.get("type") == "last_messages" and truncation.get("last_messages"):
        history = history[-int(truncation["last_messages"]) :]
    system: list[ChatMessage] = [{"role": "system", "content": instructions}] if instructions else []
    budget = prompt_limit(context_window, completion_reserve, max_prompt_tokens)
    everything = system + history + transcript
    # Most prompts fit with room to spare: prove it from byte counts and skip tokenizing the whole
    # thread on every model call (and loading a tokenizer at all when the upstream reports usage).
    if sum(bound_message(m) for m in everything) + (_utf8(json.dumps(tools)) if tools else 0) + 3 <= budget:
        return Prompt(messages=everything, model=model, tools=tools)
    fixed = sum(count_message(m, model) for m in system + transcript) + count_tools(tools, model) + 3
    costs = [count_message(m, model) for m in history]
    total = fixed + sum(costs)
    start = 0
    # Keep at least the newest message: without it there is nothing to answer.
    while total > budget and start < len(history) - 1:
        total -= costs[start]
        start += 1
    over = max_prompt_tokens is not None and total > max_prompt_tokens
    return Prompt(
        messages=system + history[start:] + transcript, model=model, tools=tools, over_budget=over, counted=total
    )
