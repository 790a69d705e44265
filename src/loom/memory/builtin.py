"""OpenAI's own truncation strategies, as memory strategies."""

from __future__ import annotations

from loom.llm.types import ChatMessage
from loom.memory.protocol import MemoryContext


class AutoMemory:
    """`auto`: the whole thread; Loom then drops the oldest messages until the prompt fits (as it does
    after every strategy)."""

    async def build(self, ctx: MemoryContext) -> list[ChatMessage]:
        return [m.chat for m in ctx.messages]


class LastMessagesMemory:
    """`last_messages`: the run's `truncation_strategy.last_messages` newest messages (all without one)."""

    async def build(self, ctx: MemoryContext) -> list[ChatMessage]:
        n = (ctx.run.get("truncation_strategy") or {}).get("last_messages")
        messages = ctx.messages[-int(n) :] if n else ctx.messages
        return [m.chat for m in messages]
