"""The one way tests wait for something that happens in the background: poll until it holds, or fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

T = TypeVar("T")

# Ingestion, kernel starts and server restarts on a loaded 2-core machine: generous, so that a pass is
# never luck, and a failure still ends the test well inside pytest-timeout's 300 s.
DEFAULT_TIMEOUT_S = 20.0


def wait_for(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = DEFAULT_TIMEOUT_S,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that; fail
    the test (AssertionError naming `what` and the last value) after `timeout` seconds. Exceptions from
    `predicate` propagate: a predicate that may fail on the way must say so itself."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], T | Literal[False] | Awaitable[T | Literal[False] | None] | None],
    # A polling deadline for a predicate, the same argument as wait_for's (not an I/O timeout).
    timeout: float = DEFAULT_TIMEOUT_S,  # noqa: ASYNC109
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """`wait_for` inside the event loop: `predicate` may be a coroutine function; sleeps without blocking."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)
