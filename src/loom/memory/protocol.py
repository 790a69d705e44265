"""The one protocol every memory strategy implements, built-in or plug-in, and what it is given.

A strategy is an object with one coroutine method:

    class MyMemory:
        async def build(self, ctx: MemoryContext) -> list[ChatMessage]:
            return [m.chat for m in ctx.messages[-4:]]

registered as an entry point in the group `loom.memory` (the entry point's name is the strategy's
name; it may point at the class, instantiated once with no arguments, or at an instance):

    [project.entry-points."loom.memory"]
    my_memory = "my_package:MyMemory"

`build` returns the thread's part of the prompt, in Chat Completions form (dicts with a `role` of
`system`, `user` or `assistant` and a string or a list of parts as `content`), oldest first. Loom puts
the run's instructions before it and the run's own tool exchanges after it, and, if the result is still
over the budget, drops its oldest messages as `auto` does. Whatever `build` raises, or returns that is
not such a list, fails the run with a `last_error` naming the strategy; the server goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from loom.llm.types import ChatMessage


class MemoryFailure(Exception):
    """A strategy could not be found or loaded, raised, or returned garbage: the run fails with this text."""


@dataclass(frozen=True, slots=True)
class ThreadMessage:
    """One message of the thread from before the run."""

    id: str
    role: str  # "user" | "assistant"
    text: str  # its text parts, joined
    chat: ChatMessage  # as `auto` sends it (images included)


class MemoryState(Protocol):
    """What a strategy keeps with the thread between runs: JSON objects by key, one namespace per
    thread and strategy (deleted with the thread)."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def put(self, key: str, value: dict[str, Any]) -> None: ...

    async def all(self) -> dict[str, dict[str, Any]]: ...

    async def put_many(self, values: Mapping[str, dict[str, Any]]) -> None: ...


@dataclass
class MemoryContext:
    """What `build` is given. `budget`: the tokens the returned messages may take (the model's window
    less room for the reply, the instructions, the tools and the run's own turns, and at most what is
    left of `max_prompt_tokens`)."""

    name: str
    thread: Mapping[str, Any]
    run: Mapping[str, Any]
    assistant: Mapping[str, Any]
    messages: Sequence[ThreadMessage]
    model: str
    state: MemoryState
    _budget: Callable[[], int]
    _count: Callable[[Sequence[ChatMessage]], int]
    _complete: Callable[[list[ChatMessage], int], Awaitable[str]]
    _embed: Callable[[Sequence[str]], Awaitable[npt.NDArray[np.float32]]]
    # The name of the model `embed` uses: vectors of two models do not compare (the server's default
    # embedder can change between runs of one thread), so a strategy keeping vectors keeps this with them.
    embedder: str = ""
    _budget_value: int | None = field(default=None, init=False)

    @property
    def budget(self) -> int:
        if self._budget_value is None:
            self._budget_value = self._budget()
        return self._budget_value

    def keep(self, default: int) -> int:
        """How many newest messages to keep verbatim: the run's `truncation_strategy.last_messages`
        when the run named this strategy with one, else `default`."""
        truncation = self.run.get("truncation_strategy") or {}
        if truncation.get("type") == self.name and truncation.get("last_messages"):
            return int(truncation["last_messages"])
        return default

    def count(self, messages: Sequence[ChatMessage]) -> int:
        """The prompt tokens these messages take for the run's model."""
        return self._count(messages)

    async def complete(self, messages: list[ChatMessage], max_tokens: int = 1024) -> str:
        """Ask the run's model (its backend) for a text reply; its tokens count in the run's `usage`."""
        return await self._complete(messages, max_tokens)

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit-length vectors of `texts` from Loom's embedder (the bundled one unless configured)."""
        return await self._embed(texts)


@runtime_checkable
class MemoryStrategy(Protocol):
    async def build(self, ctx: MemoryContext) -> list[ChatMessage]: ...
