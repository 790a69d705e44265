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


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: Any


# Ends a subscription: the stream writes `done` after it.
END = Event("done", "[DONE]")


# Sees every event of every run as it is published (and END when a run's executor stops), before any
# subscriber: the console keeps what live runs have said so far with one (`loom.console.live`).
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
