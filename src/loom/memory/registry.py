"""Which strategy a run uses, and finding it: built in, or a `loom.memory` entry point."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from loom.memory.builtin import AutoMemory, LastMessagesMemory
from loom.memory.protocol import MemoryFailure, MemoryStrategy
from loom.memory.recall import RecallMemory
from loom.memory.summary import SummaryMemory

ENTRY_POINT_GROUP = "loom.memory"
# The metadata key of a thread or an assistant that names its strategy.
METADATA_KEY = "loom_memory"
OPENAI_TYPES = frozenset({"auto", "last_messages"})
_BUILT_IN: dict[str, type[MemoryStrategy]] = {
    "auto": AutoMemory,
    "last_messages": LastMessagesMemory,
    "summary": SummaryMemory,
    "recall": RecallMemory,
}


def strategy_name(run: Mapping[str, Any], thread: Mapping[str, Any], assistant: Mapping[str, Any]) -> str:
    """The run's `truncation_strategy.type` when it names a strategy or is `last_messages`; else the
    thread's `loom_memory`, else the assistant's; else `auto` (OpenAI's default)."""
    truncation = run.get("truncation_strategy") or {}
    kind = str(truncation.get("type") or "auto")
    if kind != "auto":
        return kind
    for owner in (thread, assistant):
        named = (owner.get("metadata") or {}).get(METADATA_KEY)
        if named:
            return str(named)
    return "auto"


class Registry:
    """Strategies by name, each made once per process. Entry points are looked up again for a name not
    found yet, so a plug-in installed while Loom runs is found by the next run that names it."""

    def __init__(self) -> None:
        self._made: dict[str, MemoryStrategy] = {}

    def get(self, name: str) -> MemoryStrategy:
        found = self._made.get(name)
        if found is None:
            found = self._make(name)
            self._made[name] = found
        return found

    def _make(self, name: str) -> MemoryStrategy:
        built_in = _BUILT_IN.get(name)
        if built_in is not None:
            return built_in()
        points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not points:
            raise MemoryFailure(
                f"No memory strategy named '{name}' is installed (built in: {', '.join(sorted(_BUILT_IN))}; "
                f"plug-ins are entry points in the group '{ENTRY_POINT_GROUP}')."
            )
        try:
            loaded: Any = points[0].load()
            strategy: Any = loaded() if inspect.isclass(loaded) else loaded
        except Exception as exc:
            raise MemoryFailure(f"The memory strategy '{name}' could not be loaded: {describe(exc)}") from exc
        if not inspect.iscoroutinefunction(getattr(strategy, "build", None)):
            raise MemoryFailure(
                f"The memory strategy '{name}' ({points[0].value}) has no `async def build(self, ctx)` method."
            )
        made: MemoryStrategy = strategy
        return made


def describe(exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
