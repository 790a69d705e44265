"""Server-sent events exactly as the SDKs read them (CONFORMANCE §5.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from loom.runs.bus import END, Event, EventBus

# A stream ends after the run reaches one of these (requires_action included: the client must act).
_LAST = {
    "thread.run.completed",
    "thread.run.failed",
    "thread.run.cancelled",
    "thread.run.expired",
    "thread.run.incomplete",
    "thread.run.requires_action",
}


def frame(name: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


async def _events(
    first: list[tuple[str, Any]], queue: asyncio.Queue[Event], run_id: str, bus: EventBus, keepalive_s: float
) -> AsyncIterator[bytes]:
    try:
        for name, data in first:
            yield frame(name, data)
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), keepalive_s)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if event is END:
                break
            yield frame(event.name, event.data)
            if event.name in _LAST:
                break
        yield frame("done", "[DONE]")
    finally:
        bus.unsubscribe(run_id, queue)


def event_stream(
    first: list[tuple[str, Any]], queue: asyncio.Queue[Event], run_id: str, bus: EventBus, keepalive_s: float = 10.0
) -> StreamingResponse:
    return StreamingResponse(
        _events(first, queue, run_id, bus, keepalive_s),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
