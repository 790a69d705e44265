"""The console's record of live runs (`loom.runs.live`) on a real event bus, with events shaped by the
engine's own helpers: the snapshot a late watcher gets, and the join of snapshot and subscription.

The asyncio parts run in a thread of their own: Playwright's sync API (the browser tests of this package)
marks the main thread's event loop as running while it is open."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from loom.runs.bus import END, EventBus
from loom.runs.live import LiveRuns
from loom.runs.turn import message_delta, step_delta

T = TypeVar("T")
RUN = "run_live1"
MSG = "msg_live1"
STEP = "step_live1"


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    out: list[T] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return out[0]


def run_obj(status: str) -> dict[str, Any]:
    return {"id": RUN, "object": "thread.run", "status": status}


def message(status: str, text: str | None = None) -> dict[str, Any]:
    content = [] if text is None else [{"type": "text", "text": {"value": text, "annotations": []}}]
    return {"id": MSG, "object": "thread.message", "status": status, "role": "assistant", "content": content}


def start(bus: EventBus) -> None:
    """What an executor announces as it starts a run and opens its message (`AssistantOutput.open_message`)."""
    step = {"id": STEP, "object": "thread.run.step", "status": "in_progress", "type": "message_creation"}
    bus.publish(RUN, "thread.run.in_progress", run_obj("in_progress"))
    bus.publish(RUN, "thread.run.step.created", step)
    bus.publish(RUN, "thread.run.step.in_progress", step)
    bus.publish(RUN, "thread.message.created", message("in_progress"))
    bus.publish(RUN, "thread.message.in_progress", message("in_progress"))


def text_delta(piece: str, first: bool) -> dict[str, Any]:
    part: dict[str, Any] = {"index": 0, "type": "text", "text": {"value": piece}}
    if first:
        part["text"]["annotations"] = []
    return message_delta(MSG, [part])


def shown_text(events: list[tuple[str, Any]]) -> str:
    """The message's text as a client shows it after these events: a full object replaces, a delta appends."""
    text = ""
    for name, data in events:
        body = json.loads(data) if isinstance(data, str) else data
        if name == "thread.message.delta":
            text += "".join(p["text"].get("value", "") for p in body["delta"]["content"] if p["type"] == "text")
        elif name.startswith("thread.message."):
            text = "".join(p["text"]["value"] for p in body["content"] if p["type"] == "text")
    return text


def test_the_snapshot_is_the_run_its_objects_and_the_text_so_far_in_one_delta() -> None:
    bus = EventBus()
    live = LiveRuns(bus)
    start(bus)
    pieces = ["Stre", "aming ", "arrives ", "in ", "pieces."]
    for i, piece in enumerate(pieces):
        bus.publish(RUN, "thread.message.delta", text_delta(piece, first=i == 0))
    snapshot = live.snapshot(RUN)
    assert snapshot is not None
    assert [name for name, _ in snapshot] == [
        "thread.run.in_progress",
        "thread.run.step.in_progress",
        "thread.message.in_progress",
        "thread.message.delta",
    ]
    assert json.loads(snapshot[-1][1]) == text_delta("".join(pieces), first=True)
    assert shown_text(snapshot) == "Streaming arrives in pieces."


def test_a_full_object_replaces_the_deltas_before_it_and_later_ones_follow() -> None:
    bus = EventBus()
    live = LiveRuns(bus)
    start(bus)
    bus.publish(RUN, "thread.message.delta", text_delta("Hello", first=True))
    bus.publish(RUN, "thread.message.completed", message("completed", "Hello"))
    bus.publish(RUN, "thread.run.completed", run_obj("completed"))
    snapshot = live.snapshot(RUN)
    assert snapshot is not None
    assert [name for name, _ in snapshot] == [
        "thread.run.completed",
        "thread.run.step.in_progress",
        "thread.message.completed",
    ]
    assert shown_text(snapshot) == "Hello"


def test_tool_call_arguments_are_joined_and_the_call_s_first_delta_kept() -> None:
    bus = EventBus()
    live = LiveRuns(bus)
    bus.publish(RUN, "thread.run.in_progress", run_obj("in_progress"))
    opening = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    bus.publish(RUN, "thread.run.step.delta", step_delta(STEP, opening))
    for piece in ('{"ci', 'ty": ', '"Lyon"}'):
        bus.publish(
            RUN,
            "thread.run.step.delta",
            step_delta(STEP, {"index": 0, "type": "function", "function": {"arguments": piece}}),
        )
    snapshot = live.snapshot(RUN)
    assert snapshot is not None
    deltas = [json.loads(data) for name, data in snapshot if name == "thread.run.step.delta"]
    assert deltas == [
        step_delta(STEP, opening),
        step_delta(STEP, {"index": 0, "type": "function", "function": {"arguments": '{"city": "Lyon"}'}}),
    ]


def test_what_was_announced_is_kept_as_it_was_then() -> None:
    # The executor goes on changing the objects it announced (it saves the text into the same message dict).
    bus = EventBus()
    live = LiveRuns(bus)
    start(bus)
    announced = message("in_progress")
    bus.publish(RUN, "thread.message.in_progress", announced)
    bus.publish(RUN, "thread.message.delta", text_delta("abc", first=True))
    announced["content"].append({"type": "text", "text": {"value": "abc", "annotations": []}})
    snapshot = live.snapshot(RUN)
    assert snapshot is not None
    assert shown_text(snapshot) == "abc"


def test_only_runs_executing_here_are_kept_and_only_until_their_executor_stops() -> None:
    bus = EventBus()
    live = LiveRuns(bus)
    # A run cancelled while it waited for tool outputs (no executor): nothing to keep.
    bus.publish(RUN, "thread.run.cancelling", run_obj("cancelling"))
    bus.publish(RUN, "thread.run.cancelled", run_obj("cancelled"))
    bus.end(RUN)
    assert live.snapshot(RUN) is None and len(live) == 0
    start(bus)
    assert live.snapshot(RUN) is not None
    bus.end(RUN)
    assert live.snapshot(RUN) is None and len(live) == 0


def test_a_watcher_joining_while_deltas_arrive_sees_every_piece_once() -> None:
    pieces = [f"p{i} " for i in range(30)]

    async def scenario() -> tuple[list[tuple[str, Any]], str]:
        bus = EventBus()
        live = LiveRuns(bus)
        start(bus)
        for i, piece in enumerate(pieces[:10]):
            bus.publish(RUN, "thread.message.delta", text_delta(piece, first=i == 0))

        async def look_up() -> str:
            # The scope check reads the database: the run goes on writing meanwhile.
            for piece in pieces[10:20]:
                bus.publish(RUN, "thread.message.delta", text_delta(piece, first=False))
                await asyncio.sleep(0)
            return "found"

        queue, found, snapshot = await live.watch(RUN, look_up)
        for piece in pieces[20:]:
            bus.publish(RUN, "thread.message.delta", text_delta(piece, first=False))
        bus.publish(RUN, "thread.message.completed", message("completed", "".join(pieces)))
        bus.end(RUN)
        assert snapshot is not None
        events: list[tuple[str, Any]] = list(snapshot)
        live_text = ""
        while (event := queue.get_nowait()) is not END:
            events.append((event.name, event.data))
            if event.name == "thread.message.delta":
                live_text += shown_text([(event.name, event.data)])
        bus.unsubscribe(RUN, queue)
        assert shown_text(list(snapshot)) == "".join(pieces[:20])
        return events, found + ":" + live_text

    events, tail = in_thread(scenario())
    assert tail == "found:" + "".join(pieces[20:])
    assert shown_text(events[:-1]) == "".join(pieces)
