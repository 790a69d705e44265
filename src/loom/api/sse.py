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
    # Events published together (a step and its message opening, then the first delta) go out in one
    # write: each write to the socket is a system call, and on loopback the reader's wake-up with it.
    try:
        batch = [frame(name, data) for name, data in first]
        ended = False
        while not ended:
            if not batch:
                try:
                    event = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
            elif queue.empty():
                yield b"".join(batch)
                batch = []
                continue
            else:
                event = queue.get_nowait()
            if event is END:
                break
            batch.append(frame(event.name, event.data))
            ended = event.name in _LAST
        batch.append(frame("done", "[DONE]"))
        yield b"".join(batch)
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
