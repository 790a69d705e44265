"""Background loops under one supervisor: each runs as its own task; a loop that dies (raises, or
returns, which a forever-loop must not) is logged at ERROR with its traceback and started again after
a backoff that doubles with each quick death (up to `max_backoff_s`) and resets once the loop has run
for `healthy_s`.

The choice is to restart forever rather than stop the server: every loop Loom runs is housekeeping
(expiry, recovery of orphaned runs, ingestion, idle sandboxes) whose usual cause of death is a
transient one (the database restarting, a full disk) that the API itself reports to clients; a server
that stopped on it would turn a blip into an outage. A loop that keeps dying stays loud: one ERROR
line with the traceback per death, and its count in `restarts`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("loom.supervisor")

Loop = Callable[[], Awaitable[None]]


@dataclass
class LoopState:
    name: str
    task: asyncio.Task[None]
    restarts: int = 0
    last_error: str | None = None


class Supervisor:
    def __init__(self, *, first_backoff_s: float = 1.0, max_backoff_s: float = 30.0, healthy_s: float = 30.0) -> None:
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_s = healthy_s
        self.loops: dict[str, LoopState] = {}

    def start(self, name: str, loop: Loop) -> asyncio.Task[None]:
        """Run `loop` (a coroutine function that never returns) under supervision from now on."""
        if name in self.loops and not self.loops[name].task.done():
            raise RuntimeError(f"a loop named {name!r} is already supervised")
        task = asyncio.create_task(self._watch(name, loop), name=name)
        self.loops[name] = LoopState(name, task)
        return task

    async def _watch(self, name: str, loop: Loop) -> None:
        backoff = self.first_backoff_s
        while True:
            started = time.monotonic()
            state = self.loops[name]
            error: Exception | None = None
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
                state.last_error = f"{type(exc).__name__}: {exc}"
            else:
                state.last_error = "returned"
            if time.monotonic() - started >= self.healthy_s:
                backoff = self.first_backoff_s
            log.error(
                "background loop %s died (%s); restarting it in %.1fs",
                name,
                state.last_error,
                backoff,
                exc_info=error,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
            state.restarts += 1

    async def stop(self) -> None:
        """Cancel every loop and wait for them to end."""
        tasks = [state.task for state in self.loops.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
