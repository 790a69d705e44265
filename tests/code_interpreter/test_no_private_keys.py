"""No wire object carries Loom's bookkeeping. After a scenario that exercises every kind of it (uploads in
parts, vector-store ingestion retried after a crash, file search with citations, the code interpreter
making an image, a function call with its output submitted), no API response, no streamed event and no
row's `data` in any table has a key starting with `_`, at any depth; the bookkeeping is in `state`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Final

import httpx

from tests.code_interpreter.conftest import CI_ENV, require_sandbox
from tests.conftest import DEFAULT_KEY
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer
from tests.support.wait import wait_for
from tests.vector_stores.conftest import big_text

HEADERS: Final = {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Beta": "assistants=v2"}
INCLUDE: Final = "step_details.tool_calls[*].file_search.results[*].content"
NOTES: Final = b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges over the Zarn.\n"
CHART: Final = "import matplotlib.pyplot as plt\nplt.figure(figsize=(3, 2))\nplt.plot([1, 2, 3])\nplt.show()\n"
FUNCTION: Final = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def private_keys(value: Any, where: str = "") -> list[str]:
    """Every key starting with `_`, at any depth."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).startswith("_"):
                found.append(f"{where}.{k}")
            found += private_keys(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += private_keys(v, f"{where}[{i}]")
    return found


class Api:
    """Raw HTTP calls to a server (the SDK's models could hide keys); every answer and event is kept."""

    def __init__(self, server: LoomServer) -> None:
        self.server = server
        self.seen: list[tuple[str, Any]] = []

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.server.base_url}{path}", headers=HEADERS, timeout=120, **kwargs)
        assert response.status_code == 200, (path, response.text)
        body = response.json()
        self.seen.append((f"{method} {path}", body))
        return body

    def stream(self, path: str, body: dict[str, Any], include: list[str] | None = None) -> list[tuple[str, Any]]:
        params = {"include[]": include} if include else None
        url = f"{self.server.base_url}{path}"
        with httpx.stream("POST", url, json=body, params=params, headers=HEADERS, timeout=120) as response:
            assert response.status_code == 200, response.read()
            raw = b"".join(response.iter_raw()).decode()
        events = []
        for block in raw.split("\n\n"):
            lines = [line for line in block.split("\n") if line and not line.startswith(":")]
            if len(lines) == 2 and lines[1] != "data: [DONE]":
                event = (lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: ")))
                events.append(event)
                self.seen.append(event)
        return events


def _db(server: LoomServer) -> sqlite3.Connection:
    return sqlite3.connect(Path(server.data_dir) / "loom.db", timeout=10)


def _ingest_attempts(server: LoomServer, file_id: str) -> int | None:
    """The attempts counted on an `in_progress` vector-store file (from its row's `state`)."""
    with _db(server) as db:
        row = db.execute("SELECT status, state FROM vector_store_files WHERE id = ?", (file_id,)).fetchone()
    if row is None or row[0] != "in_progress" or row[1] is None:
        return None
    return int(json.loads(row[1]).get("attempts", 0)) or None


def _upload(api: Api, name: str, data: bytes) -> str:
    """A File made through the Uploads API, in two parts; its id."""
    body = {"filename": name, "purpose": "assistants", "bytes": len(data), "mime_type": "text/plain"}
    upload = api.call("POST", "/uploads", json=body)
    half = len(data) // 2
    parts = [
        api.call("POST", f"/uploads/{upload['id']}/parts", files={"data": ("part", chunk)})["id"]
        for chunk in (data[:half], data[half:])
    ]
    done = api.call("POST", f"/uploads/{upload['id']}/complete", json={"part_ids": parts})
    assert done["status"] == "completed"
    return str(done["file"]["id"])


def test_no_wire_object_carries_private_keys(upstream: FakeUpstream) -> None:
    require_sandbox()
    first = LoomServer(upstream_base_url=upstream.base_url, extra_env=CI_ENV).start()
    try:
        api = Api(first)
        notes = _upload(api, "notes.txt", NOTES)
        store = api.call("POST", "/vector_stores", json={"name": "kb", "file_ids": [notes]})
        big = api.call(
            "POST", "/files", files={"file": ("big.txt", big_text(20_000, "quasar"))}, data={"purpose": "assistants"}
        )
        api.call("POST", f"/vector_stores/{store['id']}/files", json={"file_id": big["id"]})
        # The server dies while indexing the big file: its attempt is counted in the row's state.
        wait_for(lambda: _ingest_attempts(first, big["id"]) == 1, timeout=60, what="the big file's first attempt")
    finally:
        first.kill()

    second = LoomServer(upstream_base_url=upstream.base_url, extra_env=CI_ENV, data_dir=first.data_dir).start()
    try:
        api = Api(second)

        def indexed() -> bool:
            files = api.call("GET", f"/vector_stores/{store['id']}/files")["data"]
            return len(files) == 2 and all(f["status"] == "completed" for f in files)

        wait_for(indexed, timeout=120, what="the interrupted ingestion to be retried")
        assistant = api.call(
            "POST",
            "/assistants",
            json={
                "model": "gpt-4o",
                "tools": [{"type": "file_search"}, {"type": "code_interpreter"}, FUNCTION],
                "tool_resources": {"file_search": {"vector_store_ids": [store["id"]]}},
            },
        )
        thread = api.call("POST", "/threads", json={"messages": [{"role": "user", "content": "Freedonia?"}]})
        runs = f"/threads/{thread['id']}/runs"
        start = {"assistant_id": assistant["id"], "stream": True}

        upstream.push(
            Turn.calls(ToolCallSpec("file_search", {"queries": ["capital of Freedonia"]})),
            Turn.reply("Gnarlytown 【0:0†notes.txt】."),
        )
        events = api.stream(runs, start)
        assert events[-1][0] == "thread.run.completed", events[-1]
        answer = next(d for n, d in events if n == "thread.message.completed")
        assert answer["content"][0]["text"]["annotations"][0]["file_citation"]["file_id"] == notes

        upstream.push(Turn.calls(ToolCallSpec("code_interpreter", {"code": CHART})), Turn.reply("A chart."))
        events = api.stream(runs, start, include=[INCLUDE])
        assert events[-1][0] == "thread.run.completed", events[-1]
        answer = next(d for n, d in events if n == "thread.message.completed")
        assert [b["type"] for b in answer["content"]] == ["text", "image_file"]

        upstream.push(Turn.calls(ToolCallSpec("lookup", {"q": "bridges"})), Turn.reply("Three hundred."))
        events = api.stream(runs, start)
        waiting = events[-1][1]
        assert waiting["status"] == "requires_action", waiting
        [call] = waiting["required_action"]["submit_tool_outputs"]["tool_calls"]
        outputs = {"tool_outputs": [{"tool_call_id": call["id"], "output": "300"}], "stream": True}
        events = api.stream(f"{runs}/{waiting['id']}/submit_tool_outputs", outputs)
        assert events[-1][0] == "thread.run.completed", events[-1]

        for run in api.call("GET", runs)["data"]:
            api.call("GET", f"{runs}/{run['id']}")
            api.call("GET", f"{runs}/{run['id']}/steps")
            api.call("GET", f"{runs}/{run['id']}/steps", params={"include[]": INCLUDE})
        api.call("GET", f"/threads/{thread['id']}/messages")
        api.call("GET", f"/threads/{thread['id']}")
        api.call("GET", "/files")
        api.call("GET", f"/vector_stores/{store['id']}")
        api.call("GET", f"/vector_stores/{store['id']}/files")
    finally:
        second.stop()

    leaks = [(where, private_keys(body)) for where, body in api.seen]
    assert [leak for leak in leaks if leak[1]] == []
    with _db(second) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = [n for n in names if "data" in {c[1] for c in db.execute(f"PRAGMA table_info({n})")}]
        assert {"runs", "run_steps", "messages", "threads", "files", "uploads", "vector_store_files"} <= set(tables)
        rows = [(n, data) for n in tables for (data,) in db.execute(f"SELECT data FROM {n}")]
    in_rows = [(n, private_keys(json.loads(data))) for n, data in rows]
    assert [leak for leak in in_rows if leak[1]] == []
    with _db(second) as db:
        states = {n: [s for (s,) in db.execute(f"SELECT state FROM {n}") if s] for n in ("runs", "run_steps")}
    # The bookkeeping is kept, in `state`: the runs' token totals, the tool calls' transcript.
    assert any("usage" in json.loads(s) for s in states["runs"])
    assert any("calls" in json.loads(s) for s in states["run_steps"])
