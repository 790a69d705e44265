"""`RunEvents`: the typed stream of one run's events that `RunService` hands the routes (issue 14, point 2),
on a real `EventBus`."""

from __future__ import annotations

import asyncio

import pytest

from loom.runs.bus import SETTLED, Event, EventBus, RunEvents


def _names(batch: list[Event]) -> list[str]:
    return [e.name for e in batch]


def _subscribed(bus: EventBus, run_id: str) -> bool:
    return run_id in bus._subscribers


async def test_announced_events_lead_and_what_is_published_joins_them_in_one_batch() -> None:
    bus = EventBus()
    events = RunEvents(bus, "run_1", idle_s=5)
    events.announce("thread.run.created", {"id": "run_1"})
    events.announce("thread.run.queued", {"id": "run_1"})
    bus.publish("run_1", "thread.run.in_progress", {"id": "run_1"})
    bus.publish("run_2", "thread.run.in_progress", {"id": "run_2"})  # another run's: not in this stream
    batch = await anext(events)
    assert _names(batch) == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert batch[0].data == {"id": "run_1"}
    assert not events.ended
    # Then it waits for the next event, and takes everything published by the time it wakes.
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    bus.publish("run_1", "thread.message.delta", 1)
    bus.publish("run_1", "thread.message.delta", 2)
    assert [e.data for e in await waiting] == [1, 2]
    events.close()
    assert not _subscribed(bus, "run_1")


async def test_an_empty_batch_after_idle_s_without_events() -> None:
    bus = EventBus()
    events = RunEvents(bus, "run_1", idle_s=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await anext(events) == []
    assert loop.time() - started >= 0.04
    assert not events.ended and _subscribed(bus, "run_1")
    bus.publish("run_1", "thread.run.step.created", {})
    assert _names(await anext(events)) == ["thread.run.step.created"]
    events.close()


@pytest.mark.parametrize("last", sorted(SETTLED))
async def test_it_ends_with_the_event_that_settles_the_run(last: str) -> None:
    bus = EventBus()
    events = RunEvents(bus, "run_1", idle_s=5)
    bus.publish("run_1", "thread.message.completed", {})
    bus.publish("run_1", last, {})
    bus.publish("run_1", "thread.run.step.created", {})  # after the end: not given
    assert _names(await anext(events)) == ["thread.message.completed", last]
    assert events.ended
    assert not _subscribed(bus, "run_1")
    with pytest.raises(StopAsyncIteration):
        await anext(events)


async def test_end_of_execution_or_end_stop_it_after_what_it_holds() -> None:
    bus = EventBus()
    events = RunEvents(bus, "run_1", idle_s=5)
    events.announce("thread.run.completed", {})
    events.end()
    assert _names(await anext(events)) == ["thread.run.completed"]
    assert events.ended
    with pytest.raises(StopAsyncIteration):
        await anext(events)
    assert not _subscribed(bus, "run_1")

    # The executor's end (`EventBus.end`) while the stream waits: it stops with nothing more.
    events = RunEvents(bus, "run_2", idle_s=5)
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.01)
    bus.end("run_2")
    with pytest.raises(StopAsyncIteration):
        await waiting
    assert events.ended and not _subscribed(bus, "run_2")


async def test_iterating_it_to_the_end_gives_every_event_once() -> None:
    bus = EventBus()
    events = RunEvents(bus, "run_1", idle_s=5)
    events.announce("thread.run.created", 0)

    async def produce() -> None:
        for i in range(1, 50):
            bus.publish("run_1", "thread.message.delta", i)
            if i % 7 == 0:
                await asyncio.sleep(0)
        bus.publish("run_1", "thread.run.completed", 50)

    producer = asyncio.ensure_future(produce())
    seen = [e.data async for batch in events for e in batch]
    await producer
    assert seen == list(range(51))
