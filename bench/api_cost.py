"""The server's Python work per API request, counted in bytecodes: a figure the machine's load cannot move.

    .venv/bin/python -m bench.api_cost [--requests 30] [--base ../loom-before]

Requests/s on this shared 2-core machine drift by 5-10 % between runs of the same code, which hides
the few-percent differences a refactoring makes. This counts instead, with `sys.settrace`'s opcode
events, the Python bytecodes the server executes per request (the app, FastAPI, Starlette, SQLAlchemy,
asyncio: everything but the client, httpx and the cookie parsing it does, which run in the same process
here). Loom runs in this process over a temporary SQLite, driven through httpx's ASGI transport; work in
other threads (the SQLite driver's) and in C is not counted, so read it beside `bench/api_bench.py`,
not instead of it, and background loops' work is not counted (only the requesting task's frames are);
the figure is the least of `--rounds` rounds.

With `--base DIR` the same scenarios run in another checkout (its own `.venv` and code) and the table
gives both and their ratio. Scenarios: create-message, retrieve-assistant, list-messages (100
messages, limit=100), an unknown assistant (404), and a streamed run against the scripted upstream
(`tests/fakes/upstream.py`, its own process: its work is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

KEY = "sk-bench"
# The client's side of each request, which runs in this process too: not counted.
CLIENT_FILES = ("/httpx/", "/httpcore/", "/email/", "/http/cookiejar.py", "/urllib/", "api_cost.py")


def _settings(data_dir: Path, upstream: str) -> Any:
    from loom.config import Settings

    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": "",
        "api_keys": [KEY],
        "upstream_base_url": upstream,
        "upstream_api_key": "sk-upstream",
        "poll_after_ms": 20,
        "sandbox_prewarm": False,
    }
    return Settings(**fields)


class Counter:
    """Counts the bytecodes run in frames of the measuring task (the ASGI transport runs the app in the
    caller's task), so that background loops waking meanwhile are not counted."""

    def __init__(self, every_task: bool = False) -> None:
        self.count = 0
        self.task = None if every_task else asyncio.current_task()

    def tracer(self, frame: FrameType, _event: str, _arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if any(part in filename for part in CLIENT_FILES):
            return None
        if self.task is not None and asyncio.current_task() is not self.task:
            return None
        frame.f_trace_opcodes = True

        def local(_frame: FrameType, event: str, _arg: Any) -> Any:
            if event == "opcode":
                self.count += 1
            return local

        return local


async def measure(requests: int, rounds: int, upstream: str) -> dict[str, float]:
    import httpx

    from loom.api.app import create_app
    from loom.container import Container

    app = create_app(Container(_settings(Path(tempfile.mkdtemp(prefix="loom-api-cost-")), upstream)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
        async with httpx.AsyncClient(transport=transport, base_url="http://loom/v1", headers=headers) as client:
            assistant = (await client.post("/assistants", json={"model": "gpt-4o", "name": "a"})).json()["id"]
            thread = (await client.post("/threads", json={})).json()["id"]
            full = (await client.post("/threads", json={})).json()["id"]
            for i in range(100):
                await client.post(f"/threads/{full}/messages", json={"role": "user", "content": f"m{i}"})
            scenarios: dict[str, Callable[[], Awaitable[httpx.Response]]] = {
                "create-message": lambda: client.post(
                    f"/threads/{thread}/messages", json={"role": "user", "content": "hello"}
                ),
                "retrieve-assistant": lambda: client.get(f"/assistants/{assistant}"),
                "list-messages": lambda: client.get(f"/threads/{full}/messages", params={"limit": 100}),
                "unknown-assistant": lambda: client.get("/assistants/asst_unknown"),
            }
            out: dict[str, float] = {}
            out["streamed-run"] = await _streamed_runs(client, assistant, max(3, requests // 5), rounds)
            for name, send in scenarios.items():
                for _ in range(20):  # warm: statement caches, lazy imports
                    await send()
                counts = []
                for _ in range(rounds):
                    counter = Counter()
                    sys.settrace(counter.tracer)
                    try:
                        for _ in range(requests):
                            response = await send()
                    finally:
                        sys.settrace(None)
                    expected = 404 if name == "unknown-assistant" else 200
                    if response.status_code != expected:
                        raise SystemExit(f"{name}: HTTP {response.status_code}: {response.text[:200]}")
                    counts.append(counter.count / requests)
                out[name] = min(counts)
            return out


async def _streamed_runs(client: Any, assistant: str, runs: int, rounds: int) -> float:
    """Bytecodes per streamed run (one thread each, the fake's reply in 4-character deltas: ~12 deltas),
    from the POST to the stream's end. The executor runs in tasks of its own, so every task is counted
    here: background loops that wake meanwhile are in it, and the least of the rounds is the figure."""
    counts = []
    for _ in range(rounds + 1):
        threads = [(await client.post("/threads", json={})).json()["id"] for _ in range(runs)]
        counter = Counter(every_task=True)
        sys.settrace(counter.tracer)
        try:
            for thread in threads:
                body = {"assistant_id": assistant, "stream": True}
                async with client.stream("POST", f"/threads/{thread}/runs", json=body) as response:
                    text = "".join([chunk async for chunk in response.aiter_text()])
        finally:
            sys.settrace(None)
        if "thread.run.completed" not in text:
            raise SystemExit(f"streamed-run: the run did not complete: {text[-300:]}")
        counts.append(counter.count / runs)
    return min(counts[1:])  # the first round warms the engine's and the upstream client's paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="the least of these rounds is the figure")
    parser.add_argument("--base", type=Path, help="another checkout to measure the same way (its .venv)")
    parser.add_argument("--json", action="store_true", help="print only this tree's figures as JSON")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(0, str(Path.cwd()))  # the measured checkout's tests/ (run by path from another one)
    from tests.fakes.upstream import FakeUpstreamProcess, Turn

    with FakeUpstreamProcess(record=False) as fake:
        fake.set_default(Turn.reply("The quick brown fox jumps over the lazy dog.", chunk_size=4))
        this = asyncio.run(measure(args.requests, args.rounds, fake.base_url))
    if args.json:
        print(json.dumps(this))
        return
    base: dict[str, float] | None = None
    if args.base is not None:
        python = args.base.resolve() / ".venv" / "bin" / "python"
        done = subprocess.run(
            [
                str(python),
                str(Path(__file__).resolve()),
                "--json",
                "--requests",
                str(args.requests),
                "--rounds",
                str(args.rounds),
            ],
            cwd=args.base,
            capture_output=True,
            text=True,
            check=True,
        )
        base = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{'scenario':<20} {'bytecodes/request':>18}" + (f" {'base':>10} {'ratio':>7}" if base else ""))
    for name, count in this.items():
        line = f"{name:<20} {count:>18.0f}"
        if base is not None:
            line += f" {base[name]:>10.0f} {count / base[name]:>7.3f}"
        print(line)


if __name__ == "__main__":
    main()
