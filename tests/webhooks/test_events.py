"""Each event type reaches a real receiver, and the official SDK's `client.webhooks.unwrap` verifies and
parses every delivery unchanged (Standard Webhooks headers, OpenAI's envelope)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.runs.conftest import FUNCTION_TOOL, wait_status
from tests.support.wait import wait_for
from tests.webhooks.conftest import register, unique_path
from tests.webhooks.receiver import Received, Receiver

ALL = [
    "thread.run.requires_action",
    "thread.run.completed",
    "thread.run.failed",
    "thread.run.cancelled",
    "thread.run.expired",
    "thread.run.incomplete",
    "vector_store.file.completed",
    "vector_store.file.failed",
    "vector_store.file_batch.completed",
]


def unwrap(client: openai.OpenAI, got: Received, secret: str) -> Any:
    return client.webhooks.unwrap(got.body, got.headers, secret=secret)


def events_of(client: openai.OpenAI, received: list[Received], secret: str) -> list[tuple[str, str]]:
    return [(e.type, e.data.id) for e in (unwrap(client, r, secret) for r in received)]


def test_run_events_are_delivered_signed_and_unwrap(
    client: openai.OpenAI, api: httpx.Client, receiver: Receiver, upstream: FakeUpstream
) -> None:
    path = unique_path()
    endpoint = register(api, receiver.url(path), *ALL, name="all")
    secret = endpoint["signing_secret"]
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])

    # requires_action, then completed after the outputs.
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    (first,) = receiver.wait(path, 1)
    event = unwrap(client, first, secret)
    assert event.type == "thread.run.requires_action" and event.data.id == run.id
    body = json.loads(first.body)
    assert body["object"] == "event" and body["id"].startswith("evt_") and body["data"]["thread_id"] == thread.id
    assert abs(body["created_at"] - time.time()) < 30
    assert first.headers["webhook-id"].startswith("wh_") and first.headers["content-type"] == "application/json"
    waiting = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert waiting.status == "requires_action"
    call = waiting.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    upstream.push(Turn.reply("Sunny."))
    client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}]
    )
    receiver.wait(path, 2)

    # failed (the model errs), incomplete (cut off), cancelled (while waiting), expired (waiting too long).
    failed = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    upstream.push(Turn.error(400, "bad request"))
    failed_run = client.beta.threads.runs.create_and_poll(thread_id=failed.id, assistant_id=assistant.id)
    assert failed_run.status == "failed"
    cut = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", '{"ci'), finish_reason="length"))
    cut_run = client.beta.threads.runs.create_and_poll(thread_id=cut.id, assistant_id=assistant.id)
    assert cut_run.status == "incomplete"
    cancel = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Rome"})))
    cancel_run = client.beta.threads.runs.create_and_poll(thread_id=cancel.id, assistant_id=assistant.id)
    client.beta.threads.runs.cancel(cancel_run.id, thread_id=cancel.id)
    expire = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Pisa"})))
    expire_run = client.beta.threads.runs.create_and_poll(thread_id=expire.id, assistant_id=assistant.id)
    wait_status(client, expire.id, expire_run.id, {"expired"}, timeout=30)

    received = receiver.wait(path, 8, timeout=30)
    got = events_of(client, received, secret)
    assert got[:2] == [("thread.run.requires_action", run.id), ("thread.run.completed", run.id)]
    assert sorted(got[2:]) == sorted(
        [
            ("thread.run.failed", failed_run.id),
            ("thread.run.incomplete", cut_run.id),
            ("thread.run.requires_action", cancel_run.id),
            ("thread.run.cancelled", cancel_run.id),
            ("thread.run.requires_action", expire_run.id),
            ("thread.run.expired", expire_run.id),
        ]
    )
    assert len(got) == 8

    # Each delivery is listed as delivered, once. The receiver has a request before Loom has its answer and
    # records the delivery, so wait for all eight to be settled (not pending) first.
    def settled() -> list[dict[str, Any]] | None:
        listed = api.get(f"/loom/webhooks/{endpoint['id']}/deliveries", params={"limit": 20}).json()["data"]
        return listed if len(listed) == 8 and all(d["status"] != "pending" for d in listed) else None

    listed = wait_for(settled, timeout=30, what="the eight deliveries settled")
    assert {d["status"] for d in listed} == {"delivered"}
    assert {d["attempts"] for d in listed} == {1}


def test_an_endpoint_gets_only_the_types_it_wants_and_nothing_when_disabled(
    client: openai.OpenAI, api: httpx.Client, receiver: Receiver, upstream: FakeUpstream
) -> None:
    wanted, disabled = unique_path(), unique_path()
    register(api, receiver.url(wanted), "thread.run.completed")
    register(api, receiver.url(disabled), *ALL, enabled=False)
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "weather?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    call = run.required_action.submit_tool_outputs.tool_calls[0]  # type: ignore[union-attr]
    upstream.push(Turn.reply("Sunny."))
    client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}]
    )
    (only,) = receiver.wait(wanted, 1)
    assert json.loads(only.body)["type"] == "thread.run.completed"
    time.sleep(1.0)
    assert len(receiver.at(wanted)) == 1 and receiver.at(disabled) == []


@pytest.mark.parametrize("content", [b"hello webhooks " * 50])
def test_vector_store_file_and_batch_events(
    client: openai.OpenAI, api: httpx.Client, receiver: Receiver, content: bytes
) -> None:
    path = unique_path()
    endpoint = register(api, receiver.url(path), *ALL)
    good = client.files.create(file=("notes.txt", content), purpose="assistants")
    bad = client.files.create(file=("broken.pdf", b"%PDF-1.4 not really"), purpose="assistants")
    store = client.vector_stores.create(name="hooks")
    batch = client.vector_stores.file_batches.create_and_poll(vector_store_id=store.id, file_ids=[good.id, bad.id])
    assert batch.status == "completed"
    received = receiver.wait(path, 3, timeout=60)
    got = set(events_of(client, received, endpoint["signing_secret"]))
    assert got == {
        ("vector_store.file.completed", good.id),
        ("vector_store.file.failed", bad.id),
        ("vector_store.file_batch.completed", batch.id),
    }
    time.sleep(0.5)
    assert len(receiver.at(path)) == 3
