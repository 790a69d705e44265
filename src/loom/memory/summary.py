"""`summary`: the newest messages verbatim, everything older folded into a rolling summary the model
writes, kept with the thread and refreshed as the thread grows.

The summary is refreshed when the messages not in it reach twice the verbatim window (or no longer fit
the budget): the older of them are folded in, in batches that fit half the budget, one model call each.
So a growing thread costs one summary call every `keep` messages, and every prompt holds the summary
and between `keep` and `2 × keep − 1` verbatim messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from loom.llm.types import ChatMessage
from loom.memory.protocol import MemoryContext, ThreadMessage

KEEP = 10
SUMMARY_MAX_TOKENS = 800
# Recognisable by tests and by whoever reads the upstream's logs.
SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant. "
    "Rewrite the summary so that it also covers the new messages: keep names, numbers, decisions, "
    "open questions and anything the user asked to remember; drop small talk. Reply with the summary only."
)
SUMMARY_HEADING = "Summary of the earlier part of this conversation:"
# A single message longer than this is cut in what the summarizer is shown.
_MESSAGE_CHARS = 4000


def _shown(message: ThreadMessage) -> str:
    text = message.text if message.text else "[no text]"
    if len(text) > _MESSAGE_CHARS:
        text = text[:_MESSAGE_CHARS] + " […]"
    return f"{message.role}: {text}"


def _summary_message(summary: str) -> list[ChatMessage]:
    return [{"role": "system", "content": f"{SUMMARY_HEADING}\n{summary}"}] if summary else []


class SummaryMemory:
    async def build(self, ctx: MemoryContext) -> list[ChatMessage]:
        keep = ctx.keep(KEEP)
        messages = list(ctx.messages)
        state = await ctx.state.get("summary") or {}
        summary = str(state.get("text") or "")
        ids = [m.id for m in messages]
        through = state.get("through")
        # A message the summary covered was deleted: start again from the whole thread.
        start = ids.index(through) + 1 if through in ids else 0
        if through not in ids:
            summary = ""
        pending = messages[start:]
        fits = ctx.count(_summary_message(summary) + [m.chat for m in pending]) <= ctx.budget
        if len(pending) < 2 * keep and fits:
            return _summary_message(summary) + [m.chat for m in pending]
        tail = pending[-keep:] if keep else []
        # Verbatim messages take at most half the budget; the summary and the reply fit in the rest.
        while len(tail) > 1 and ctx.count([m.chat for m in tail]) > ctx.budget // 2:
            tail = tail[1:]
        fold = pending[: len(pending) - len(tail)]
        if fold:
            summary = await self._fold(ctx, summary, fold)
            await ctx.state.put("summary", {"text": summary, "through": fold[-1].id, "folded": start + len(fold)})
        return _summary_message(summary) + [m.chat for m in tail]

    async def _fold(self, ctx: MemoryContext, summary: str, fold: Sequence[ThreadMessage]) -> str:
        batch_tokens = max(ctx.budget // 2, 256)
        batch: list[ThreadMessage] = []
        size = 0
        for message in fold:
            cost = ctx.count([{"role": "user", "content": _shown(message)}])
            if batch and size + cost > batch_tokens:
                summary = await self._call(ctx, summary, batch)
                batch, size = [], 0
            batch.append(message)
            size += cost
        if batch:
            summary = await self._call(ctx, summary, batch)
        return summary

    async def _call(self, ctx: MemoryContext, summary: str, batch: Sequence[ThreadMessage]) -> str:
        shown = "\n\n".join(_shown(m) for m in batch)
        request: list[ChatMessage] = [
            {"role": "system", "content": SUMMARY_INSTRUCTIONS},
            {
                "role": "user",
                "content": f"Summary so far:\n{summary or '(none yet)'}\n\nNew messages:\n{shown}",
            },
        ]
        return (await ctx.complete(request, SUMMARY_MAX_TOKENS)).strip() or summary
