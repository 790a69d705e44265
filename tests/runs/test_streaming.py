"""Streaming exactly as CONFORMANCE §5: the SDK helpers with every callback, and the raw wire."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
from openai import AssistantEventHandler
from openai.types.beta.threads import Message, MessageDelta, Text, TextDelta
from openai.types.beta.threads.runs import RunStep, RunStepDelta, ToolCall, ToolCallDelta
from typing_extensions import override

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer

HEADERS = {"Authorization": "Bearer sk-test-default", "OpenAI-Beta": "assistants=v2"}


class Recorder(AssistantEventHandler):
    """Records every helper callback, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.events: list[str] = []
        self.text = ""
        self.arguments = ""

    @override
    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    @override
    def on_run_step_created(self, run_step: RunStep) -> None:
        self.calls.append(f"step_created:{run_step.type}")

    @override
    def on_run_step_delta(self, delta: RunStepDelta, snapshot: RunStep) -> None:
        self.calls.append("step_delta")

    @override
    def on_run_step_done(self, run_step: RunStep) -> None:
        self.calls.append(f"step_done:{run_step.status}")

    @override
    def on_message_created(self, message: Message) -> None:
        self.calls.append("message_created")

    @override
    def on_message_delta(self, delta: MessageDelta, snapshot: Message) -> None:
        self.calls.append("message_delta")

    @override
    def on_message_done(self, message: Message) -> None:
        self.calls.append(f"message_done:{message.status}")

    @override
    def on_text_created(self, text: Text) -> None:
        self.calls.append("text_created")

    @override
    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.text += delta.value or ""
        self.calls.append("text_delta")

    @override
    def on_text_done(self, text: Text) -> None:
        self.calls.append(f"text_done:{text.value}")

    @override
    def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.calls.append(f"tool_created:{tool_call.type}")

    @override
    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        if delta.type == "function" and delta.function is not None:
            self.arguments += delta.function.arguments or ""
        self.calls.append("tool_delta")

    @override
    def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.calls.append(f"tool_done:{tool_call.function.name if tool_call.type == 'function' else tool_call.type}")

    @override
    def on_end(self) -> None:
        self.calls.append("end")


def squeeze(calls: list[str]) -> list[str]:
    """Collapse repeats (deltas) so the order reads clearly."""
    out: list[str] = []
    for call in calls:
        if not out or out[-1] != call:
            out.append(call)
    return out


TEXT_EVENTS = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
    "thread.message.delta",
    "thread.message.completed",
    "thread.run.step.completed",
    "thread.run.completed",
]


def test_stream_helper_text_callbacks_in_order(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Hello"}])
    upstream.push(Turn.reply("Hello there, world", chunk_size=4))
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=handler) as s:
        s.until_done()
    assert squeeze(handler.events) == TEXT_EVENTS
    assert handler.events.count("thread.message.delta") == 5
    assert squeeze(handler.calls) == [
        "step_created:message_creation",
        "message_created",
        "text_created",
        *["text_delta", "message_delta"] * 5,
        "text_done:Hello there, world",
        "message_done:completed",
        "step_done:completed",
        "end",
    ]
    assert handler.text == "Hello there, world"
    run = handler.get_final_run()
    assert run.status == "completed" and run.usage is not None
    messages = handler.get_final_messages()
    assert len(messages) == 1 and messages[0].content[0].type == "text"
    assert messages[0].content[0].text.value == "Hello there, world"
    # The SDK keeps each step as `thread.run.step.created` showed it (it applies only step deltas).
    steps = handler.get_final_run_steps()
    assert [s.type for s in steps] == ["message_creation"] and steps[0].run_id == run.id


def test_stream_tool_call_then_submit_tool_outputs_stream(
    client: openai.OpenAI, upstream: FakeUpstream, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Paris"}), arguments_chunk_size=4))
    first = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=first) as s:
        s.until_done()
    assert squeeze(first.events) == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.requires_action",
    ]
    assert squeeze(first.calls) == [
        "step_created:tool_calls",
        "tool_created:function",
        "step_delta",
        *["tool_delta", "step_delta"] * 5,
        "tool_done:get_weather",
        "end",
    ]
    assert first.arguments == '{"city": "Paris"}'
    run = first.get_final_run()
    assert run.status == "requires_action" and run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    snapshot = first.current_run_step_snapshot
    assert snapshot is not None and snapshot.step_details.type == "tool_calls"
    streamed = snapshot.step_details.tool_calls[0]
    assert streamed.type == "function" and streamed.id == call.id  # ids and names sent once, not repeated
    assert streamed.function.name == "get_weather" and streamed.function.arguments == '{"city": "Paris"}'

    upstream.push(Turn.reply("Sunny in Paris.", chunk_size=5))
    second = Recorder()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        thread_id=thread.id,
        run_id=run.id,
        tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}],
        event_handler=second,
    ) as s:
        s.until_done()
    assert squeeze(second.events) == ["thread.run.step.completed", "thread.run.queued", *TEXT_EVENTS[2:]]
    assert second.get_final_run().status == "completed"
    final = second.get_final_messages()
    assert [m.content[0].text.value for m in final if m.content[0].type == "text"] == ["Sunny in Paris."]
    assert upstream.last_request.body["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_create_and_run_stream(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    upstream.push(Turn.reply("New thread reply", chunk_size=8))
    handler = Recorder()
    with client.beta.threads.create_and_run_stream(
        assistant_id=assistant.id,
        thread={"messages": [{"role": "user", "content": "start"}]},
        event_handler=handler,
    ) as s:
        s.until_done()
    assert squeeze(handler.events) == ["thread.created", *TEXT_EVENTS]
    run = handler.get_final_run()
    assert run.status == "completed"
    assert handler.get_final_messages()[0].thread_id == run.thread_id


def test_sdk_raw_stream_true(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "raw"}])
    upstream.push(Turn.reply("abcdef", chunk_size=2))
    stream = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, stream=True)
    events = list(stream)
    assert [e.event for e in events if e.event != "thread.message.delta"] == [
        n for n in TEXT_EVENTS if n != "thread.message.delta"
    ]
    deltas = [e.data for e in events if e.event == "thread.message.delta"]
    assert len(deltas) == 3


def _frames(response: httpx.Response) -> tuple[list[tuple[str, Any]], bytes]:
    raw = b"".join(response.iter_raw())
    frames: list[tuple[str, Any]] = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = lines[1][len("data: ") :]
        frames.append((lines[0][len("event: ") :], data if data == "[DONE]" else json.loads(data)))
    return frames, raw


def _stream_run(server: LoomServer, thread_id: str, assistant_id: str) -> AbstractContextManager[httpx.Response]:
    """`POST …/runs` with `stream: true` over plain httpx, to read the wire itself (a context manager)."""
    return httpx.stream(
        "POST",
        f"{server.base_url}/threads/{thread_id}/runs",
        json={"assistant_id": assistant_id, "stream": True},
        headers=HEADERS,
        timeout=30,
    )


def test_raw_wire_text_stream(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "wire"}])
    upstream.push(Turn.reply("one two three", chunk_size=4))
    with _stream_run(run_server, thread.id, assistant.id) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames, raw = _frames(response)
    # The stream closes right after `[DONE]`: nothing follows it.
    assert raw.endswith(b"event: done\ndata: [DONE]\n\n")
    names = [n for n, _ in frames]
    assert squeeze(names) == [*TEXT_EVENTS, "done"]
    run_id = frames[0][1]["id"]
    assert frames[0][1]["status"] == "queued" and frames[2][1]["status"] == "in_progress"
    assert frames[2][1]["started_at"] is not None
    step = frames[3][1]
    assert step["type"] == "message_creation" and step["usage"] is None and step["run_id"] == run_id
    message = frames[5][1]
    assert message["content"] == [] and message["run_id"] == run_id and message["role"] == "assistant"
    assert step["step_details"]["message_creation"]["message_id"] == message["id"]
    deltas = [d for n, d in frames if n == "thread.message.delta"]
    assert deltas[0]["delta"]["content"] == [{"index": 0, "type": "text", "text": {"value": "one ", "annotations": []}}]
    assert all("annotations" not in d["delta"]["content"][0]["text"] for d in deltas[1:])
    assert all(d["id"] == message["id"] and d["object"] == "thread.message.delta" for d in deltas)
    assert "".join(d["delta"]["content"][0]["text"]["value"] for d in deltas) == "one two three"
    completed = dict(frames)["thread.message.completed"]
    assert completed["content"] == [{"type": "text", "text": {"value": "one two three", "annotations": []}}]
    assert dict(frames)["thread.run.step.completed"]["usage"] is not None
    final = dict(frames)["thread.run.completed"]
    assert final["usage"] is not None and final["expires_at"] is None and final["completed_at"] is not None


def test_raw_wire_tool_call_deltas_send_id_and_name_once(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "two calls"}])
    upstream.push(
        Turn.calls(
            ToolCallSpec("get_weather", {"city": "Oslo"}),
            ToolCallSpec("get_weather", {"city": "Rome"}),
            arguments_chunk_size=5,
        )
    )
    with _stream_run(run_server, thread.id, assistant.id) as response:
        frames, _ = _frames(response)
    names = [n for n, _ in frames]
    assert names[-2:] == ["thread.run.requires_action", "done"]
    created = dict(frames)["thread.run.step.created"]
    assert created["step_details"] == {"type": "tool_calls", "tool_calls": []}
    calls: dict[int, list[dict[str, Any]]] = {}
    for name, data in frames:
        if name == "thread.run.step.delta":
            assert data["id"] == created["id"] and data["object"] == "thread.run.step.delta"
            for call in data["delta"]["step_details"]["tool_calls"]:
                calls.setdefault(call["index"], []).append(call)
    assert sorted(calls) == [0, 1]
    required = dict(frames)["thread.run.requires_action"]["required_action"]["submit_tool_outputs"]["tool_calls"]
    for index, parts in calls.items():
        head, rest = parts[0], parts[1:]
        assert head["id"] == required[index]["id"] and head["type"] == "function"
        assert head["function"] == {"name": "get_weather", "arguments": "", "output": None}
        assert all("id" not in p and "name" not in p["function"] for p in rest)
        assert "".join(p["function"]["arguments"] for p in rest) == required[index]["function"]["arguments"]
    client.beta.threads.runs.cancel(required and dict(frames)["thread.run.requires_action"]["id"], thread_id=thread.id)


def test_keep_alive_comments_during_silence(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    """The servers of these tests send `: keep-alive` after 0.3 s of silence (LOOM_SSE_KEEPALIVE_S)."""
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "slow"}])
    upstream.push(Turn.reply("late", delay_s=1.2))
    with _stream_run(run_server, thread.id, assistant.id) as response:
        frames, raw = _frames(response)
    assert b"\n: keep-alive\n\n" in raw
    assert frames[-2][0] == "thread.run.completed"
    # The SDK skips the comments.
    upstream.push(Turn.reply("late again", delay_s=1.0))
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=handler) as s:
        s.until_done()
    assert handler.get_final_run().status == "completed" and handler.text == "late again"


def test_errors_before_the_first_byte_are_json(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    response = httpx.post(
        f"{run_server.base_url}/threads/thread_missing/runs",
        json={"assistant_id": assistant.id, "stream": True},
        headers=HEADERS,
    )
    assert response.status_code == 404 and response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["type"] == "invalid_request_error"
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Nice"})))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    response = httpx.post(
        f"{run_server.base_url}/threads/{thread.id}/runs",
        json={"assistant_id": assistant.id, "stream": True},
        headers=HEADERS,
    )
    assert response.status_code == 400 and response.headers["content-type"].startswith("application/json")
    assert f"already has an active run {run.id}" in response.json()["error"]["message"]
    response = httpx.post(
        f"{run_server.base_url}/threads/{thread.id}/runs/{run.id}/submit_tool_outputs",
        json={"tool_outputs": [], "stream": True},
        headers=HEADERS,
    )
    assert response.status_code == 400 and response.headers["content-type"].startswith("application/json")
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_failed_run_streams_failed_then_done(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "x"}])
    upstream.push(Turn.error(429, "Rate limit reached"), Turn.error(429, "Rate limit reached"))
    handler = Recorder()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=handler) as s:
        s.until_done()
    run = handler.get_final_run()
    assert run.status == "failed" and run.last_error is not None and run.last_error.code == "rate_limit_exceeded"
    assert handler.events[-1] == "thread.run.failed"


def test_cancel_while_streaming_ends_the_stream(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "go on"}])
    upstream.push(Turn.hang(after=4))
    frames: list[tuple[str, Any]] = []
    with _stream_run(run_server, thread.id, assistant.id) as response:
        lines = response.iter_lines()
        name = ""
        for line in lines:
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                frames.append((name, data if data == "[DONE]" else json.loads(data)))
                if name == "thread.message.delta" and sum(n == name for n, _ in frames) == 2:
                    run_id = frames[0][1]["id"]
                    client.beta.threads.runs.cancel(run_id, thread_id=thread.id)
    names = squeeze([n for n, _ in frames])
    assert names[-6:] == [
        "thread.message.delta",
        "thread.run.cancelling",
        "thread.message.incomplete",
        "thread.run.step.cancelled",
        "thread.run.cancelled",
        "done",
    ]
    incomplete = dict(frames)["thread.message.incomplete"]
    assert incomplete["incomplete_details"] == {"reason": "run_cancelled"}
    streamed = "".join(d["delta"]["content"][0]["text"]["value"] for n, d in frames if n == "thread.message.delta")
    assert incomplete["content"][0]["text"]["value"] == streamed


def test_refusal_is_streamed_and_kept(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "something bad"}])
    upstream.push(Turn.refuse("I can't help with that.", chunk_size=6))
    stream = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, stream=True)
    events = list(stream)
    deltas = [e.data.delta.content for e in events if e.event == "thread.message.delta"]
    parts = [p for content in deltas for p in content or []]
    assert parts and all(p.type == "refusal" and p.index == 0 for p in parts)
    assert "".join(p.refusal or "" for p in parts if p.type == "refusal") == "I can't help with that."
    message = client.beta.threads.messages.list(thread.id).data[0]
    assert message.status == "completed"
    assert [c.type for c in message.content] == ["refusal"]
    assert message.content[0].refusal == "I can't help with that."  # type: ignore[union-attr]


def test_every_streamed_state_is_already_committed(
    run_server: LoomServer, upstream: FakeUpstream, client: openai.OpenAI, assistant: Any
) -> None:
    """Whatever an event announces can be read back the moment the event arrives (commit before publish)."""
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "check"}])
    upstream.push(
        Turn.calls(ToolCallSpec("get_weather", {"city": "Graz"}), chunk_delay_s=0.02),
    )
    order = ["queued", "in_progress", "requires_action", "cancelling", "cancelled", "completed"]
    checked: list[str] = []
    with _stream_run(run_server, thread.id, assistant.id) as response:
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
                continue
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if name.startswith("thread.run.step."):
                if name == "thread.run.step.delta":
                    continue
                step = client.beta.threads.runs.steps.retrieve(data["id"], thread_id=thread.id, run_id=data["run_id"])
                assert step.status == data["status"], name
                checked.append(name)
            elif name.startswith("thread.run."):
                run = client.beta.threads.runs.retrieve(data["id"], thread_id=thread.id)
                assert order.index(run.status) >= order.index(data["status"]), (name, run.status)
                checked.append(name)
    assert checked == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.requires_action",
    ]
    client.beta.threads.runs.cancel(run.id, thread_id=thread.id)


def test_stream_helper_with_include(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    """`runs.stream(include=[…])` sends `include[]` in the query; the run streams as usual."""
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    upstream.push(Turn.reply("with include"))
    handler = Recorder()
    with client.beta.threads.runs.stream(
        thread_id=thread.id,
        assistant_id=assistant.id,
        include=["step_details.tool_calls[*].file_search.results[*].content"],
        event_handler=handler,
    ) as s:
        s.until_done()
    assert handler.get_final_run().status == "completed" and handler.text == "with include"
