"""Server-sent events exactly as the SDKs read them (CONFORMANCE §5.1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from loom.services.runs import RunEvents

_DONE = b"event: done\ndata: [DONE]\n\n"
_KEEPALIVE = b": keep-alive\n\n"


def frame(name: str, data: Any) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


async def _frames(events: RunEvents) -> AsyncIterator[bytes]:
    # Events published together (a step and its message opening, then the first delta) go out in one
    # write: each write to the socket is a system call, and on loopback the reader's wake-up with it.
    try:
        async for batch in events:
            if not batch:
                yield _KEEPALIVE
                continue
            data = b"".join(frame(event.name, event.data) for event in batch)
            if events.ended:
                yield data + _DONE
                return
            yield data
        yield _DONE
    finally:
        events.close()


def event_stream(events: RunEvents) -> StreamingResponse:
    """A run's events (`loom.services.runs.RunService`) as a `text/event-stream` response, ending with `done`."""
    return StreamingResponse(
        _frames(events),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
