"""Memory strategies on a long thread: prompt tokens per run and time to first token, side by side.

    python -m bench.memory_bench [--turns 200] [--runs 10] [--postgres]

One `loom serve`, the fake upstream as its own process (it reports usage counted from what it was
sent, about 4 characters a token, and answers summary calls like any other). Three copies of one
`--turns`-turn thread (a user message and an assistant reply per turn): `auto` (nothing opted in: the
baseline), `summary` and `recall` (thread metadata `loom_memory`). Then `--runs` new turns on each,
interleaved: a user message and a streaming run. The first run of `summary` and `recall` pays for
opting in on an existing long thread (the whole older part summarised or embedded once), so it is
shown on its own (for `recall` it includes loading the bundled embedder, once per process); the
others are the steady state. Prompt tokens are the run's `usage` (summary calls
included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

import httpx
from tests.fakes.upstream import FakeUpstreamProcess, Turn
from tests.support.postgres import new_database
from tests.support.server import LoomServer

from bench.runs_bench import HEADERS, REPLY, pct, table

STRATEGIES = ("auto", "summary", "recall")
_WORDS = [
    "invoice",
    "budget",
    "meeting",
    "garden",
    "recipe",
    "travel",
    "train",
    "hotel",
    "museum",
    "concert",
    "football",
    "weather",
    "doctor",
    "contract",
    "deadline",
    "laptop",
    "battery",
    "printer",
    "kitchen",
    "holiday",
    "flight",
    "ticket",
    "salary",
    "project",
    "report",
]


def _text(rng: random.Random, who: str, turn: int) -> str:
    return f"{who} turn {turn}: " + " ".join(rng.choice(_WORDS) for _ in range(40)) + "."


async def _long_thread(http: httpx.AsyncClient, strategy: str, turns: int) -> str:
    metadata = {} if strategy == "auto" else {"loom_memory": strategy}
    made = await http.post("/threads", json={"metadata": metadata})
    made.raise_for_status()
    thread_id = str(made.json()["id"])
    rng = random.Random(7)  # the same thread for each strategy
    for turn in range(turns):
        for role in ("user", "assistant"):
            added = await http.post(
                f"/threads/{thread_id}/messages", json={"role": role, "content": _text(rng, role, turn)}
            )
            added.raise_for_status()
    return thread_id


async def _turn(http: httpx.AsyncClient, thread_id: str, assistant_id: str, text: str) -> tuple[float, int]:
    """A user message and a streaming run: (time to the first delta in s, the run's prompt tokens)."""
    (await http.post(f"/threads/{thread_id}/messages", json={"role": "user", "content": text})).raise_for_status()
    start = time.perf_counter()
    first = 0.0
    event = ""
    usage: dict[str, Any] | None = None
    body = {"assistant_id": assistant_id, "stream": True}
    async with http.stream("POST", f"/threads/{thread_id}/runs", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
                if not first and event == "thread.message.delta":
                    first = time.perf_counter() - start
            elif line.startswith("data: ") and event == "thread.run.completed":
                usage = json.loads(line[6:])["usage"]
    if not first or usage is None:
        raise RuntimeError(f"the run on {thread_id} did not complete with a delta (last event {event})")
    return first, int(usage["prompt_tokens"])


async def bench(base_url: str, turns: int, runs: int) -> dict[str, list[tuple[float, int]]]:
    async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, timeout=600) as http:
        made = await http.post("/assistants", json={"model": "gpt-4o", "instructions": "You are terse."})
        assistant_id = str(made.json()["id"])
        # Warm-up: a prompt over the byte bound makes the server load its tokenizer (once per process),
        # which would otherwise land on whichever strategy runs first.
        big = [{"role": "user", "content": "word " * 4000} for _ in range(10)]
        huge = await http.post("/threads", json={"messages": big})
        await _turn(http, str(huge.json()["id"]), assistant_id, "hi")
        threads = {s: await _long_thread(http, s, turns) for s in STRATEGIES}
        out: dict[str, list[tuple[float, int]]] = {s: [] for s in STRATEGIES}
        rng = random.Random(11)
        for i in range(runs):
            text = _text(rng, "user", turns + i)
            for strategy in STRATEGIES:
                out[strategy].append(await _turn(http, threads[strategy], assistant_id, text))
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()
    with FakeUpstreamProcess(record=False) as fake:
        fake.set_default(Turn.reply(REPLY, chunk_size=4))
        server = LoomServer(database_url=new_database() if args.postgres else "", upstream_base_url=fake.base_url)
        server.env.pop("LOOM_POLL_AFTER_MS", None)
        with server:
            results = asyncio.run(bench(server.base_url, args.turns, args.runs))
    rows: list[list[str]] = []
    rows.append(["first run: prompt tokens", *(str(results[s][0][1]) for s in STRATEGIES)])
    rows.append(["first run: TTFT ms", *(f"{results[s][0][0] * 1000:.1f}" for s in STRATEGIES)])
    steady = {s: results[s][1:] or results[s] for s in STRATEGIES}
    rows.append(
        ["later runs: prompt tokens (mean)", *(f"{statistics.mean(p for _, p in steady[s]):.0f}" for s in STRATEGIES)]
    )
    for q in (0.5, 0.95):
        rows.append(
            [f"later runs: TTFT p{int(q * 100)} ms", *(f"{pct([t for t, _ in steady[s]], q):.1f}" for s in STRATEGIES)]
        )
    db = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\nmemory bench ({db}, a {args.turns}-turn thread, {args.runs} runs per strategy, interleaved)")
    table(["", *STRATEGIES], rows)


if __name__ == "__main__":
    main()
