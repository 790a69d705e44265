"""Running a run's memory strategy: its context, its model calls (counted in the run's usage), the
checks on what it returns, and the failures that end the run instead of the server."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from loom import tokens
from loom.llm.accumulate import collect
from loom.llm.errors import UpstreamError
from loom.llm.routing import Route
from loom.llm.types import ChatMessage, ChatRequest, Usage
from loom.memory.protocol import MemoryContext, MemoryFailure, ThreadMessage
from loom.memory.registry import Registry, describe, strategy_name
from loom.memory.state import ThreadMemoryState, forget_thread
from loom.retrieval.embedding import Embedder, WordLlamaEmbedder
from loom.store.db import Database

_ROLES = frozenset({"system", "user", "assistant"})


class MemoryService:
    """One per replica: the registry of strategies and what they use (database, embedder)."""

    def __init__(self, db: Database, embedder: Embedder | None = None) -> None:
        self.db = db
        self.embedder = embedder
        self.registry = Registry()

    def _embedder(self) -> Embedder:
        """The container's embedder, or (a service made without one) the bundled default."""
        if self.embedder is None:
            self.embedder = WordLlamaEmbedder()
        return self.embedder

    @property
    def embedder_name(self) -> str:
        return self._embedder().name

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.asarray(await self._embedder().embed(texts), dtype=np.float32)

    async def forget_thread(self, thread_id: str) -> None:
        await forget_thread(self.db, thread_id)

    def for_run(
        self,
        project: str,
        run: Mapping[str, Any],
        thread: Mapping[str, Any],
        assistant: Mapping[str, Any],
        route: Route,
    ) -> RunMemory:
        return RunMemory(self, project, run, thread, assistant, route)


class RunMemory:
    """A run's strategy, applied once per distinct thread history (a run's later model calls, after
    its tool rounds, reuse it), with the tokens its model calls took until the executor takes them."""

    def __init__(
        self,
        service: MemoryService,
        project: str,
        run: Mapping[str, Any],
        thread: Mapping[str, Any],
        assistant: Mapping[str, Any],
        route: Route,
    ) -> None:
        self.service = service
        self.project = project
        self.run = run
        self.thread = thread
        self.assistant = assistant
        self.route = route
        self.name = strategy_name(run, thread, assistant)
        self._usage: list[Usage] = []
        self._last: tuple[tuple[str, ...], list[ChatMessage]] | None = None

    def take_usage(self) -> tuple[int, int]:
        """(prompt, completion) tokens of the strategy's model calls since the last take."""
        taken, self._usage = self._usage, []
        return sum(u.prompt_tokens for u in taken), sum(u.completion_tokens for u in taken)

    async def history(
        self,
        messages: Sequence[ThreadMessage],
        budget: Callable[[], int],
        count: Callable[[Sequence[ChatMessage]], int],
    ) -> list[ChatMessage]:
        """The thread's part of the prompt as the run's strategy builds it."""
        key = tuple(m.id for m in messages)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        strategy = self.service.registry.get(self.name)
        ctx = MemoryContext(
            name=self.name,
            thread=self.thread,
            run=self.run,
            assistant=self.assistant,
            messages=messages,
            model=self.route.upstream_model,
            state=ThreadMemoryState(self.service.db, self.project, str(self.thread["id"]), self.name),
            _budget=budget,
            _count=count,
            _complete=self._complete,
            _embed=self.service.embed,
            embedder=self.service.embedder_name,
        )
        try:
            built = await strategy.build(ctx)
        except (UpstreamError, MemoryFailure):
            raise
        except Exception as exc:
            raise MemoryFailure(f"The memory strategy '{self.name}' failed: {describe(exc)}") from exc
        checked = _checked(self.name, built)
        self._last = (key, checked)
        return checked

    async def _complete(self, messages: list[ChatMessage], max_tokens: int) -> str:
        request = ChatRequest(model=self.route.upstream_model, messages=messages, max_tokens=max_tokens)
        # An async generator (the backend protocol's `stream_chat`): closed if this call is cancelled.
        stream: Any = self.route.backend.stream_chat(request)
        async with contextlib.aclosing(stream) as chunks:
            result = await collect(chunks)
        usage = result.usage
        if usage is None:
            # A server that does not report usage: count what was sent and received.
            model = self.route.upstream_model
            sent = sum(tokens.count_tokens(str(m.get("content") or ""), model) + 4 for m in messages) + 3
            got = tokens.count_tokens(result.content, model)
            usage = Usage(sent, got, sent + got)
        self._usage.append(usage)
        return result.content


def _checked(name: str, built: object) -> list[ChatMessage]:
    """`built` if it is a list of chat messages; else the run fails saying what came back."""
    if not isinstance(built, list):
        raise MemoryFailure(
            f"The memory strategy '{name}' returned {type(built).__name__}, not a list of chat messages."
        )
    for i, message in enumerate(built):
        content = message.get("content") if isinstance(message, dict) else None
        if (
            not isinstance(message, dict)
            or message.get("role") not in _ROLES
            or not isinstance(content, str | list)
            or (isinstance(content, list) and not all(isinstance(p, dict) and "type" in p for p in content))
        ):
            raise MemoryFailure(
                f"The memory strategy '{name}' returned an invalid message at index {i}: expected an object "
                "with a 'role' of 'system', 'user' or 'assistant' and a string or a list of parts as 'content'."
            )
    return built
