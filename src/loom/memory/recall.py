"""`recall`: the newest messages verbatim, and the older ones most relevant to the newest user message
recalled from an index of the thread (the embedder file search uses: the bundled one by default).

Each older message is embedded once, when it first leaves the verbatim window, and its vector kept
with the thread, with the name of the embedder that made it: after the server's embedder changes,
the thread's vectors are made again by the new one (two models' vectors do not compare). The
recalled messages go first, in the thread's order, inside one system message.
"""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt

from loom.llm.types import ChatMessage
from loom.memory.protocol import MemoryContext, ThreadMessage

KEEP = 10
TOP = 5
RECALL_HEADING = "Earlier messages of this conversation, recalled as relevant to the latest message:"


def _encode(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()


def _decode(text: str) -> npt.NDArray[np.float32]:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32)


def _recalled(messages: list[ThreadMessage]) -> list[ChatMessage]:
    if not messages:
        return []
    body = "\n\n".join(f"[{m.role}] {m.text}" for m in messages)
    return [{"role": "system", "content": f"{RECALL_HEADING}\n\n{body}"}]


class RecallMemory:
    async def build(self, ctx: MemoryContext) -> list[ChatMessage]:
        keep = max(ctx.keep(KEEP), 1)
        messages = list(ctx.messages)
        if len(messages) <= keep:
            return [m.chat for m in messages]
        older, recent = messages[:-keep], messages[-keep:]
        older = [m for m in older if m.text.strip()]
        query = next((m.text for m in reversed(recent) if m.role == "user" and m.text.strip()), "")
        if not older or not query:
            return [m.chat for m in recent]
        stored = await ctx.state.all()
        # A vector is reused only if today's embedder made it (the default may have changed since).
        missing = [m for m in older if stored.get(m.id, {}).get("e") != ctx.embedder]
        if missing:
            vectors = await ctx.embed([m.text for m in missing])
            fresh = {m.id: {"v": _encode(v), "e": ctx.embedder} for m, v in zip(missing, vectors, strict=True)}
            await ctx.state.put_many(fresh)
            stored.update(fresh)
        matrix = np.stack([_decode(str(stored[m.id]["v"])) for m in older])
        scores = matrix @ (await ctx.embed([query]))[0]
        room = ctx.budget - ctx.count([m.chat for m in recent])
        chosen: list[int] = []
        for index in np.argsort(-scores, kind="stable")[:TOP]:
            candidate = sorted([*chosen, int(index)])
            if ctx.count(_recalled([older[i] for i in candidate])) > room:
                break
            chosen = candidate
        return _recalled([older[i] for i in chosen]) + [m.chat for m in recent]
