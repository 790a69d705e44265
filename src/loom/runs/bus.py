"""In-process publish/subscribe of run events, and the registry of live executors.

Events go out only after the state they describe is committed. Across replicas (PostgreSQL) only
control messages travel (a cancel asked on one replica reaches the executor on another through the
coordinator's notifications, `loom.store.coordination`); a stream is always served by the replica executing the run, since both calls that stream
(create, submit tool outputs) start the executor where they are received.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    data: Any


# Ends a subscription: the stream writes `done` after it.
END = Event("done", "[DONE]")


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[Event]]] = defaultdict(set)

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
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(Event(name, data))

    def end(self, run_id: str) -> None:
        for queue in self._subscribers.get(run_id, ()):
            queue.put_nowait(END)
