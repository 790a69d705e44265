"""In-process publish/subscribe of run events, and the registry of live executors.

Events go out only after the state they describe is committed. Across replicas (PostgreSQL) only
control messages travel (a cancel asked on one replica reaches the executor on another through the
coordinator's notifications, `loom.store.coordination`); a stream is always served by the replica executing the run, since both calls that stream
(create, submit tool outputs) start the executor where they are received.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The events after which a run waits or has stopped (requires_action included: the client must act);
# a stream of its events ends with them.
SETTLED = frozenset(
    f"thread.run.{s}" for s in ("requires_action", "completed", "failed", "cancelled", "expired", "incomplete")
)


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: Any


# Ends a subscription: the stream writes `done` after it.
END = Event("done", "[DONE]")


# Sees every event of every run as it is published (and END when a run's executor stops), before any
# subscriber: the console keeps what live runs have said so far with one (`loom.runs.live`).
Tap = Callable[[str, Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        self._taps: list[Tap] = []

    def add_tap(self, tap: Tap) -> None:
        self._taps.append(tap)

    def subscribe(self, run_id: str) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers[run_id].add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[Event]) -> None:
        subs = self._subscribers.get(run_id)
        if subs is not None:
            subs.discard(queue)
            if not subs:
                del self._subscribers[run_id]

    def publish(self, run_id: str, name: str, data: Any) -> None:
        event = Event(name, data)
        for tap in self._taps:
            tap(run_id, event)
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(event)

    def end(self, run_id: str) -> None:
        for tap in self._taps:
            tap(run_id, END)
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(END)


class RunEvents:
    """One run's events as a stream, subscribed from the moment it is made (nothing published after
    that is missed): first what `announce` put at its head, then what the run publishes, in batches.

    Each batch holds every event already there (at least one), or is empty when none came for `idle_s`
    (a stream's chance to send a keep-alive). It ends after the run settles (`SETTLED`), or at the end
    of the run's execution here, or after `end()`; `ended` then says so, and the subscription is given
    back (`close()` gives it back earlier)."""

    def __init__(self, bus: EventBus, run_id: str, *, idle_s: float = 10.0) -> None:
        self.run_id = run_id
        self.idle_s = idle_s
        self.ended = False
        self._bus = bus
        self._queue = bus.subscribe(run_id)
        self._head: list[Event] = []

    def announce(self, name: str, data: Any) -> None:
        """An event the stream gives before any published one (what the caller knows happened)."""
        self._head.append(Event(name, data))

    def end(self) -> None:
        """End the stream after what it holds now."""
        self._queue.put_nowait(END)

    def drop_received(self) -> None:
        """Forget what was published since the stream was made (a snapshot taken now covers it)."""
        while not self._queue.empty():
            self._queue.get_nowait()

    def close(self) -> None:
        self._bus.unsubscribe(self.run_id, self._queue)

    def __aiter__(self) -> RunEvents:
        return self

    async def __anext__(self) -> list[Event]:
        batch, self._head = self._head, []
        if not batch and not self.ended:
            try:
                self._add(await asyncio.wait_for(self._queue.get(), self.idle_s), batch)
            except TimeoutError:
                return []
        while not self.ended and not self._queue.empty():
            self._add(self._queue.get_nowait(), batch)
        if self.ended:
            self.close()
        if not batch:
            raise StopAsyncIteration
        return batch

    def _add(self, event: Event, batch: list[Event]) -> None:
        if event is END:
            self.ended = True
            return
        batch.append(event)
        self.ended = event.name in SETTLED
