"""The console in Firefox: Debian's firefox-esr (`make firefox` installs it), driven over WebDriver BiDi by
puppeteer-core on Node (tests/console/firefox/smoke.mjs; it downloads no browser). A smoke test: sign in from a
deep link, a thread's messages and runs, a playground answer streaming. Screenshots land in
test-artifacts/console/firefox-*.png."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import DEFAULT_KEY
from tests.console.conftest import ARTIFACTS
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import LoomServer

pytestmark = pytest.mark.console

FIREFOX = "/usr/bin/firefox-esr"
SMOKE_DIR = Path(__file__).resolve().parent / "firefox"
FUNCTION_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.fixture(scope="session")
def puppeteer_core() -> Path:
    """Install the pinned puppeteer-core on first use (package-lock.json; it downloads no browser)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm must be installed (`make node`: Debian packages nodejs, npm)"
    if not Path(FIREFOX).exists():
        pytest.fail("Firefox is not installed: `make firefox` (Debian's `firefox-esr` package) installs it.")
    target = SMOKE_DIR / "node_modules" / "puppeteer-core"
    if not target.exists():
        result = subprocess.run(
            [npm, "ci", "--prefix", str(SMOKE_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"},
        )
        assert result.returncode == 0, result.stderr
    return target


def test_firefox_signs_in_shows_a_thread_and_streams_a_playground_answer(
    puppeteer_core: Path, e2e_server: LoomServer, e2e_client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assistant = e2e_client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = e2e_client.beta.threads.create(messages=[{"role": "user", "content": "Weather in Lyon, please?"}])
    upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Lyon"})), Turn.reply("Lyon is mild today."))
    run = e2e_client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "requires_action" and run.required_action is not None
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    run = e2e_client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "mild, 17C"}]
    )
    assert run.status == "completed"

    final = "Firefox shows this answer a few characters at a time, as it streams."
    gate = f"firefox-{uuid.uuid4().hex}"
    upstream.push(Turn.reply(final, chunk_size=4, gate=gate, gate_after=4))  # three pieces, then hold
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    origin = f"http://127.0.0.1:{e2e_server.port}"
    args = ["node", str(SMOKE_DIR / "smoke.mjs"), origin, DEFAULT_KEY, thread.id, assistant.id, str(ARTIFACTS)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as smoke:
        try:
            assert smoke.stdout is not None
            first = smoke.stdout.readline()
            assert first, smoke.stderr.read() if smoke.stderr else ""
            partial = json.loads(first)["partial"]
            upstream.release(gate)
            out, err = smoke.communicate(timeout=180)
        finally:
            upstream.release(gate)
            if smoke.poll() is None:
                smoke.kill()
    assert smoke.returncode == 0, err
    # The answer was on the page while the upstream still held the rest of it.
    assert partial == {"text": final[:12], "status": "in_progress"}
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["userAgent"].startswith("firefox/"), seen["userAgent"]
    assert seen["signinPath"] == f"/console/signin?next=%2Fconsole%2Fthreads%2F{thread.id}"
    thread_page = seen["thread"]
    assert thread_page["state"] == "ready" and thread_page["project"] == "project default"
    assert [(cls.split()[-1], text) for cls, text in thread_page["messages"]] == [
        ("role-user", "Weather in Lyon, please?"),
        ("role-assistant", "Lyon is mild today."),
    ]
    assert thread_page["runs"] == [[run.id, "completed", True]]
    assert [(json.loads(args_text), output) for args_text, output in thread_page["calls"]] == [
        ({"city": "Lyon"}, "mild, 17C")
    ]
    assert seen["answer"] == final
    assert seen["errors"] == []
