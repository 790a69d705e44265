"""The openai npm package on Node against a real Loom: stream a run, submit tool outputs with a stream,
and exit on its own after `[DONE]` (openai-node reads until the body ends)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Install the pinned openai package on first use (package-lock.json; the npm registry is reachable)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm must be installed (Debian packages nodejs, npm)"
    target = NODE_DIR / "node_modules" / "openai"
    if not target.exists():
        result = subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
    return target


def test_openai_node_streams_a_run_and_submits_tool_outputs(
    node_modules: Path, run_server: LoomServer, upstream: FakeUpstream
) -> None:
    upstream.push(
        Turn.calls(ToolCallSpec("get_weather", {"city": "Paris"}), arguments_chunk_size=4),
        Turn.reply("It is sunny in Paris.", chunk_size=5),
        Turn.reply("Raw stream reply.", chunk_size=6),
    )
    result = subprocess.run(
        ["node", str(NODE_DIR / "stream_run.mjs"), run_server.base_url, "sk-test-default"],
        capture_output=True,
        text=True,
        timeout=60,  # a client left hanging after [DONE] fails here
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["waitingStatus"] == "requires_action"
    assert seen["firstEvents"][:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert seen["firstEvents"][-1] == "thread.run.requires_action"
    assert [(c["name"], c["arguments"]) for c in seen["calls"]] == [("get_weather", '{"city": "Paris"}')]
    assert seen["toolCallCreated"] == {"id": seen["calls"][0]["id"], "type": "function", "name": "get_weather"}
    assert seen["argumentsSeen"] == '{"city": "Paris"}'
    assert seen["secondEvents"][:2] == ["thread.run.step.completed", "thread.run.queued"]
    assert seen["secondEvents"][-1] == "thread.run.completed"
    assert seen["finalStatus"] == "completed"
    assert seen["text"] == "It is sunny in Paris."
    assert seen["finalMessages"] == [["It is sunny in Paris."]]
    assert seen["rawEvents"][-1] == "thread.run.completed" and "thread.message.delta" in seen["rawEvents"]
