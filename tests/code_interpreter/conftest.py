"""One Loom server (SQLite) with the real sandbox and short limits, pointed at a scripted fake model.

The code the tests run comes from the fake model's tool calls, so everything goes through a run: the
executor, the code_interpreter tool, the sandbox, Files, steps, messages and the SSE stream.
Needs `bwrap` and the sandbox environment (`python -m loom.sandbox.setup`, which `make test` runs);
where either is missing the tests fail, they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import REPO, LoomServer

ENV = Path(os.environ.get("LOOM_SANDBOX_ENV", str(REPO / ".venv-sandbox"))).absolute()
TIMEOUT_S = 8
MAX_OUTPUT_BYTES = 8192
MEMORY_MB = 384


def require_sandbox() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed (apt-get install -y bubblewrap)")
    if not (ENV / "pyvenv.cfg").exists():
        pytest.fail(f"no sandbox environment at {ENV} (python -m loom.sandbox.setup)")


# The environment of the code-interpreter test servers: the real sandbox with short limits.
CI_ENV = {
    "LOOM_SANDBOX_ENV": str(ENV),
    "LOOM_SANDBOX_TIMEOUT_S": str(TIMEOUT_S),
    "LOOM_SANDBOX_MEMORY_MB": str(MEMORY_MB),
    "LOOM_SANDBOX_MAX_PROCESSES": "64",
    "LOOM_SANDBOX_DISK_MB": "32",
    "LOOM_SANDBOX_TMP_MB": "32",
    "LOOM_SANDBOX_MAX_OUTPUT_BYTES": str(MAX_OUTPUT_BYTES),
    "LOOM_SANDBOX_MAX_SESSIONS": "12",
    "LOOM_SANDBOX_POOL_SIZE": "1",
    "LOOM_POLL_AFTER_MS": "20",
}


@pytest.fixture(scope="session")
def ci_server(upstream: FakeUpstream) -> Iterator[LoomServer]:
    require_sandbox()
    server = LoomServer(upstream_base_url=upstream.base_url, extra_env=CI_ENV)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def client(ci_server: LoomServer) -> openai.OpenAI:
    return sdk_client(ci_server, timeout=120)


@pytest.fixture(scope="session")
def assistant_id(ci_server: LoomServer) -> str:
    a = sdk_client(ci_server).beta.assistants.create(
        model="gpt-4o", instructions="Use Python.", tools=[{"type": "code_interpreter"}]
    )
    return a.id


@dataclass
class CodeRun:
    """One run in which the model called the code interpreter once with `code`, then answered."""

    run: Any
    call: Any  # the step's CodeInterpreterToolCall
    tool_message: dict[str, Any]  # what Loom sent the model back for the call

    @property
    def logs(self) -> str:
        return "".join(o.logs for o in self.call.code_interpreter.outputs if o.type == "logs")


def run_code(
    client: openai.OpenAI,
    upstream: FakeUpstream,
    thread_id: str,
    assistant_id: str,
    code: str,
    reply: str = "Done.",
    **run_kwargs: Any,
) -> CodeRun:
    before = len(upstream.requests)
    upstream.push(Turn.calls(ToolCallSpec("code_interpreter", {"code": code})), Turn.reply(reply))
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=50, **run_kwargs
    )
    assert run.status == "completed", (run.status, run.last_error)
    steps = list(client.beta.threads.runs.steps.list(thread_id=thread_id, run_id=run.id, order="asc"))
    tool_steps = [s for s in steps if s.step_details.type == "tool_calls"]
    assert len(tool_steps) == 1, steps
    details = tool_steps[0].step_details
    assert details.type == "tool_calls"
    (call,) = details.tool_calls
    assert call.type == "code_interpreter"
    assert call.code_interpreter.input == code
    requests = upstream.requests[before:]
    assert len(requests) == 2, requests  # the tool call, then the answer with the tool's output
    tool_messages = [m for m in requests[1].messages if m.get("role") == "tool"]
    assert tool_messages, requests[1].messages
    return CodeRun(run=run, call=call, tool_message=tool_messages[-1])


def new_thread(client: openai.OpenAI, **kwargs: Any) -> str:
    kwargs.setdefault("messages", [{"role": "user", "content": "Please compute."}])
    return client.beta.threads.create(**kwargs).id


def healthy(client: openai.OpenAI, upstream: FakeUpstream, thread_id: str, assistant_id: str) -> None:
    """The server still runs code for this thread (the same session, restarted if it had to be) and for a
    new one, and still answers plain API calls."""
    r = run_code(client, upstream, thread_id, assistant_id, "print(6 * 7)")
    assert r.logs == "42\n", r.logs
    r = run_code(client, upstream, new_thread(client), assistant_id, "print('fresh')")
    assert r.logs == "fresh\n", r.logs
    assert client.beta.assistants.retrieve(assistant_id).id == assistant_id


def sandbox_roots(server: LoomServer) -> list[Path]:
    """Where the server's sandbox keeps sessions' /mnt/data on the host: its data dir, and its runtime
    folder (`loom-sbx-<pid>-*` in the first world-traversable temporary folder)."""
    assert server.proc is not None
    parents = {Path(tempfile.gettempdir()), Path("/tmp"), Path("/dev/shm"), Path("/run")}
    runtime = [p for parent in parents for p in parent.glob(f"loom-sbx-{server.proc.pid}-*")]
    assert runtime, "the sandbox's runtime folder was not found"
    return [server.data_dir, *runtime]


def find_host_file(name: str, roots: list[Path], depth: int = 6) -> list[Path]:
    """Where a file of this (unique) name lies on the host, under `roots` (a bounded walk)."""
    found: list[Path] = []
    for root in roots:
        base = len(root.parts)
        for folder, dirs, files in os.walk(root):
            if len(Path(folder).parts) - base >= depth:
                dirs[:] = []
            if name in files:
                found.append(Path(folder) / name)
    return found
