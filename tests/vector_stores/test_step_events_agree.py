"""A file-search step shows the same in the stream as in `GET …/steps/{id}` and the step list, for every
`include[]` combination: result `content` only when asked (when the run was created, for its stream)."""

from __future__ import annotations

import json
from typing import Any, Final

import httpx
import openai

from tests.conftest import DEFAULT_KEY
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer

INCLUDE: Final = "step_details.tool_calls[*].file_search.results[*].content"
COMBINATIONS: Final[list[list[str]]] = [[], [INCLUDE]]
HEADERS: Final = {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Beta": "assistants=v2"}
NOTES: Final = b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges.\n"
FUNCTION: Final = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def _events(response: httpx.Response) -> list[tuple[str, Any]]:
    assert response.status_code == 200, response.read()
    events: list[tuple[str, Any]] = []
    for block in b"".join(response.iter_raw()).decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if len(lines) == 2 and lines[1] != "data: [DONE]":
            events.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
    return events


def _streamed(
    server: LoomServer, path: str, body: dict[str, Any], include: list[str] | None = None
) -> list[tuple[str, Any]]:
    """The events of a streaming POST (`include[]` in the query when given)."""
    params = {"include[]": include} if include is not None else None
    with httpx.stream(
        "POST", f"{server.base_url}{path}", params=params, json=body, headers=HEADERS, timeout=60
    ) as response:
        return _events(response)


def _results(step: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        r
        for call in step["step_details"].get("tool_calls", [])
        if call["type"] == "file_search"
        for r in call["file_search"].get("results") or []
    ]


def _get(server: LoomServer, path: str, include: list[str]) -> Any:
    response = httpx.get(f"{server.base_url}{path}", params={"include[]": include}, headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _check_agreement(server: LoomServer, thread_id: str, events: list[tuple[str, Any]], include: list[str]) -> int:
    """Each streamed step event shows content as `include` says; the event that ended a step equals the GET
    of that step and its entry in the step list (both with `include`). Returns how many results were seen
    in ended steps (a step still in progress changes after its last event: its calls come as deltas)."""
    ended: dict[str, dict[str, Any]] = {}
    seen = 0
    for name, data in events:
        if name.startswith("thread.run.step.") and name != "thread.run.step.delta":
            for result in _results(data):
                assert ("content" in result) == bool(include), (name, include, result)
            if data["status"] != "in_progress":
                seen += len(_results(data))
                ended[data["id"]] = data
    for step_id, streamed in ended.items():
        base = f"/threads/{thread_id}/runs/{streamed['run_id']}/steps"
        assert _get(server, f"{base}/{step_id}", include) == streamed
        listed = {s["id"]: s for s in _get(server, base, include)["data"]}
        assert listed[step_id] == streamed
    return seen


def test_streamed_steps_agree_with_get(vs_server: LoomServer, client: openai.OpenAI, upstream: FakeUpstream) -> None:
    vs_id = client.vector_stores.create(name="notes").id
    done = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs_id, file=("notes.txt", NOTES), poll_interval_ms=20
    )
    assert done.status == "completed"
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search"}, FUNCTION],  # type: ignore[list-item]
        tool_resources={"file_search": {"vector_store_ids": [vs_id]}},
    )
    for include in COMBINATIONS:
        # A run that searches and answers: steps streamed by the executor.
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "Capital of Freedonia?"}])
        upstream.push(
            Turn.calls(ToolCallSpec("file_search", {"queries": ["capital of Freedonia"]})),
            Turn.reply("Gnarlytown 【0:0†notes.txt】."),
        )
        events = _streamed(
            vs_server, f"/threads/{thread.id}/runs", {"assistant_id": assistant.id, "stream": True}, include
        )
        assert events[-1][0] == "thread.run.completed", events[-1]
        assert _check_agreement(vs_server, thread.id, events, include) > 0

        # A search and a function call in one turn: the step waits for the output, and submitting it
        # streams that step's completion (with the run's `include[]`) before the resumed run's events.
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "Bridges?"}])
        upstream.push(
            Turn.calls(ToolCallSpec("file_search", {"queries": ["bridges"]}), ToolCallSpec("lookup", {"q": "b"})),
            Turn.reply("Three hundred."),
        )
        events = _streamed(
            vs_server, f"/threads/{thread.id}/runs", {"assistant_id": assistant.id, "stream": True}, include
        )
        assert events[-1][0] == "thread.run.requires_action", events[-1]
        run = events[-1][1]
        _check_agreement(vs_server, thread.id, events, include)
        [call] = run["required_action"]["submit_tool_outputs"]["tool_calls"]
        resumed = _streamed(
            vs_server,
            f"/threads/{thread.id}/runs/{run['id']}/submit_tool_outputs",
            {"tool_outputs": [{"tool_call_id": call["id"], "output": "300"}], "stream": True},
        )
        assert resumed[0][0] == "thread.run.step.completed" and resumed[-1][0] == "thread.run.completed"
        assert _check_agreement(vs_server, thread.id, resumed, include) > 0
