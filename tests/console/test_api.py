"""The console API (`/console/api`): keyed and project-scoped like /v1, paginated server-side, searchable;
and the console's pages served by `loom serve` itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_KEY, sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.support.server import LoomServer
from tests.support.wait import wait_for


@pytest.fixture()
def client(console_server: LoomServer) -> openai.OpenAI:
    return sdk_client(console_server)


@pytest.fixture(scope="session")
def console_other_key(console_server: LoomServer) -> str:
    return console_server.new_project_key("console-api-other")


def origin(server: LoomServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def get(server: LoomServer, path: str, key: str | None = DEFAULT_KEY, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.get(origin(server) + path, headers=headers, params=params, timeout=30)


def tagged_threads(client: openai.OpenAI, n: int) -> tuple[str, list[str]]:
    """`n` threads tagged with a fresh value, oldest first."""
    tag = uuid.uuid4().hex
    ids = [client.beta.threads.create(metadata={"suite": tag, "n": str(i)}).id for i in range(n)]
    return tag, ids


def test_every_console_api_route_needs_a_key(console_server: LoomServer) -> None:
    for path in ("/console/api/me", "/console/api/threads", "/console/api/threads/thread_x/runs/run_x/events"):
        missing = get(console_server, path, key=None)
        assert missing.status_code == 401, path
        assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
        wrong = get(console_server, path, key="sk-wrong-key-123456")
        assert wrong.status_code == 401, path
        assert wrong.json()["error"] == {
            "message": "Incorrect API key provided: sk-wro***3456.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }


def test_me_names_the_key_s_project(console_server: LoomServer, console_other_key: str) -> None:
    assert get(console_server, "/console/api/me").json() == {
        "object": "console.session",
        "project": "default",
        "open": False,
    }
    assert get(console_server, "/console/api/me", key=console_other_key).json()["project"] == "console-api-other"


def test_threads_are_listed_newest_first_a_page_at_a_time(console_server: LoomServer, client: openai.OpenAI) -> None:
    tag, ids = tagged_threads(client, 7)
    newest_first = list(reversed(ids))
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"q": f"suite={tag}", "limit": 3}
        if after:
            params["after"] = after
        page = get(console_server, "/console/api/threads", **params).json()
        pages += 1
        seen += [t["id"] for t in page["data"]]
        assert page["object"] == "list" and page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == newest_first and pages == 3
    # `before` walks back to the newer page, in the same order.
    back = get(console_server, "/console/api/threads", q=f"suite={tag}", limit=3, before=newest_first[3]).json()
    assert [t["id"] for t in back["data"]] == newest_first[:3]


def test_each_thread_has_counts_last_activity_and_last_run(
    console_server: LoomServer, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    tag = uuid.uuid4().hex
    thread = client.beta.threads.create(
        metadata={"suite": tag},
        messages=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    )
    upstream.push(Turn.reply("first answer"))
    first = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    upstream.push(Turn.error(400, "The model refused the request."))
    second = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert (first.status, second.status) == ("completed", "failed")
    empty = client.beta.threads.create(metadata={"suite": tag})

    rows = get(console_server, "/console/api/threads", q=f"suite={tag}").json()["data"]
    assert [r["id"] for r in rows] == [empty.id, thread.id]
    busy = rows[1]
    assert busy["object"] == "console.thread" and busy["metadata"] == {"suite": tag}
    assert (busy["message_count"], busy["run_count"]) == (3, 2)
    assert busy["last_run"] == {"id": second.id, "status": "failed", "model": "gpt-4o"}
    assert busy["last_activity_at"] >= (second.failed_at or 0) >= thread.created_at
    idle = rows[0]
    assert (idle["message_count"], idle["run_count"], idle["last_run"]) == (0, 0, None)
    assert idle["last_activity_at"] == empty.created_at


def test_search_by_id_metadata_text_and_exact_value(console_server: LoomServer, client: openai.OpenAI) -> None:
    tag = uuid.uuid4().hex
    alpha = client.beta.threads.create(metadata={"customer": f"Alpha-{tag}", "tier": "gold"})
    beta = client.beta.threads.create(metadata={"customer": f"beta-{tag}", "tier": "gold"})

    def ids(q: str) -> list[str]:
        response = get(console_server, "/console/api/threads", q=q, limit=100)
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["data"]]

    assert ids(f"alpha-{tag}") == [alpha.id]  # metadata text, any case
    assert ids(tag) == [beta.id, alpha.id]
    assert ids(f"customer=beta-{tag}") == [beta.id]  # exact value of a key
    assert ids(f"customer=beta-{tag[:8]}") == []  # exact means exact
    assert ids(alpha.id) == [alpha.id]  # the id
    assert ids(alpha.id[-10:].lower()) == [alpha.id]  # part of the id, any case
    # LIKE's wildcards are plain characters in a search.
    assert ids(f"%{tag}") == [] and ids(f"alpha_{tag}") == []


def test_list_parameters_are_checked_with_openai_s_errors(console_server: LoomServer) -> None:
    too_big = get(console_server, "/console/api/threads", limit=101)
    assert too_big.status_code == 400
    assert too_big.json()["error"]["code"] == "integer_above_max_value"
    long_q = get(console_server, "/console/api/threads", q="x" * 300)
    assert long_q.status_code == 400 and long_q.json()["error"]["param"] == "q"
    unknown = get(console_server, "/console/api/threads", after="thread_doesnotexist")
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "after"


def test_another_project_sees_none_of_it(
    console_server: LoomServer, client: openai.OpenAI, console_other_key: str, upstream: FakeUpstream
) -> None:
    tag, ids = tagged_threads(client, 2)
    assistant = client.beta.assistants.create(model="gpt-4o")
    upstream.push(Turn.reply("hi"))
    run = client.beta.threads.runs.create_and_poll(thread_id=ids[0], assistant_id=assistant.id)

    theirs = get(console_server, "/console/api/threads", key=console_other_key, q=f"suite={tag}").json()
    assert theirs["data"] == []
    by_id = get(console_server, "/console/api/threads", key=console_other_key, q=ids[0]).json()
    assert by_id["data"] == []
    # A cursor from another project is not in this list: the same error as for an id that does not exist.
    foreign_cursor = get(console_server, "/console/api/threads", key=console_other_key, after=ids[0])
    assert foreign_cursor.status_code == 400
    assert foreign_cursor.json()["error"]["message"] == (f"Invalid 'after': no object with id '{ids[0]}' in this list.")
    # Another project's run: 404 in the console exactly as in /v1.
    events = get(console_server, f"/console/api/threads/{ids[0]}/runs/{run.id}/events", key=console_other_key)
    v1 = httpx.get(
        f"{console_server.base_url}/threads/{ids[0]}/runs/{run.id}",
        headers={"Authorization": f"Bearer {console_other_key}", "OpenAI-Beta": "assistants=v2"},
    )
    assert events.status_code == v1.status_code == 404
    assert events.json() == v1.json()
    assert events.json()["error"]["message"] == f"No thread found with id '{ids[0]}'."


def parse_sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        name = lines[0].removeprefix("event: ")
        data = lines[1].removeprefix("data: ")
        events.append((name, data if name == "done" else json.loads(data)))
    return events


def test_a_running_run_can_be_watched_to_its_end(
    console_server: LoomServer, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "count"}])
    gate = f"watch-{uuid.uuid4().hex}"
    # The reply holds after its first event until the watcher is connected: the run is mid-stream when watched.
    upstream.push(Turn.reply("one two three four five six", chunk_size=3, gate=gate, gate_after=1))
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held(gate)
    with httpx.stream(
        "GET",
        f"{origin(console_server)}/console/api/threads/{thread.id}/runs/{run.id}/events",
        headers={"Authorization": f"Bearer {DEFAULT_KEY}"},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        upstream.release(gate)
        body = response.read().decode()
    events = parse_sse(body)
    names = [name for name, _ in events]
    assert names[0] == "thread.run.in_progress"
    assert events[0][1]["id"] == run.id
    assert names[-2:] == ["thread.run.completed", "done"]
    text = "".join(
        part["text"]["value"]
        for name, data in events
        if name == "thread.message.delta"
        for part in data["delta"]["content"]
    )
    assert text == "one two three four five six" and "thread.message.completed" in names

    # A run that has ended: its state, then done.
    ended = parse_sse(get(console_server, f"/console/api/threads/{thread.id}/runs/{run.id}/events").text)
    assert [name for name, _ in ended] == ["thread.run.completed", "done"]


def read_until_idle(chunks: Iterator[bytes]) -> str:
    """What a stream sends until it goes quiet (its first keep-alive comment: the server sends one when it
    has had nothing to send for LOOM_SSE_KEEPALIVE_S)."""
    received = ""
    for chunk in chunks:
        received += chunk.decode()
        if ": keep-alive" in received:
            return received
    return received


def message_text(events: list[tuple[str, Any]]) -> str:
    """The assistant message's text as a client shows it: a full message object replaces it, a delta appends."""
    text = ""
    for name, data in events:
        if name == "thread.message.delta":
            text += "".join(p["text"].get("value", "") for p in data["delta"]["content"] if p["type"] == "text")
        elif name.startswith("thread.message."):
            text = "".join(p["text"]["value"] for p in data["content"] if p["type"] == "text")
    return text


def test_a_watcher_joining_mid_answer_gets_the_text_so_far_then_the_rest_once(
    console_server: LoomServer, client: openai.OpenAI, console_other_key: str, upstream: FakeUpstream
) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "count"}])
    final = "alpha beta gamma delta epsilon zeta eta theta"
    gate = f"join-{uuid.uuid4().hex}"
    upstream.push(Turn.reply(final, chunk_size=3, gate=gate, gate_after=5))  # four pieces, then it holds
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    upstream.wait_held(gate)
    so_far = final[:12]
    path = f"{origin(console_server)}/console/api/threads/{thread.id}/runs/{run.id}/events"
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}

    def snapshot() -> list[tuple[str, Any]]:
        with httpx.stream("GET", path, headers=headers, timeout=60) as response:
            return parse_sse(read_until_idle(response.iter_bytes()))

    # The server has read the held pieces once the snapshot shows them (the upstream sent them already).
    first = wait_for(lambda: (events := snapshot()) and message_text(events) == so_far and events, what="text")
    # The run, its step and its message as announced, then the text so far in one delta.
    assert [name for name, _ in first] == [
        "thread.run.in_progress",
        "thread.run.step.in_progress",
        "thread.message.in_progress",
        "thread.message.delta",
    ]
    assert first[0][1]["id"] == run.id and first[2][1]["run_id"] == run.id
    # Another project's key: not found, exactly as before, and none of the text.
    theirs = httpx.get(
        f"{origin(console_server)}/console/api/threads/{thread.id}/runs/{run.id}/events",
        headers={"Authorization": f"Bearer {console_other_key}"},
        timeout=30,
    )
    assert theirs.status_code == 404 and so_far not in theirs.text
    with httpx.stream("GET", path, headers=headers, timeout=60) as response:
        chunks = response.iter_bytes()
        before = parse_sse(read_until_idle(chunks))
        upstream.release(gate)
        after = parse_sse("".join(chunk.decode() for chunk in chunks))
    assert message_text(before) == so_far
    events = before + after
    names = [name for name, _ in events]
    assert names[-2:] == ["thread.run.completed", "done"]
    # Every piece once: the deltas after the snapshot continue its text exactly where it stopped.
    deltas = [e for e in after if e[0] == "thread.message.delta"]
    assert so_far + message_text(deltas) == final
    assert message_text(events) == final


def test_pages_are_served_by_loom_itself(console_server: LoomServer) -> None:
    root = httpx.get(origin(console_server) + "/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    for path in ("/console/", "/console/threads/thread_abc", "/console/vector_stores/vs_1"):
        page = httpx.get(origin(console_server) + path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/console/static/js/app.js">' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
    asset = httpx.get(origin(console_server) + "/console/static/js/app.js")
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
    again = httpx.get(
        origin(console_server) + "/console/static/js/app.js", headers={"if-none-match": asset.headers["etag"]}
    )
    assert again.status_code == 304
    for missing in ("/console/static/nope.js", "/console/static/..%2Fapi.py", "/console/api/nothing"):
        response = httpx.get(origin(console_server) + missing)
        assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error", missing
