"""Baseline for Loom's overhead: streamed Chat Completions calls made straight to the fake upstream.

    python -m bench.upstream_direct [--requests 300] [--concurrency 1,8] [--process]

Prints one row per concurrency: latency to first token and to the end (p50/p95, ms), and calls/s.
Other benchmarks run the same numbers through Loom and compare against this table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

import openai
from tests.fakes.upstream import FakeUpstream, FakeUpstreamProcess, Turn

from loom.llm import ChatRequest, OpenAIBackend
from loom.llm.openai_backend import BackendConfig

REPLY = Turn.reply("The quick brown fox jumps over the lazy dog.", chunk_size=4)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _sdk_call(client: openai.AsyncOpenAI) -> tuple[float, float]:
    start = time.perf_counter()
    first = 0.0
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


async def _backend_call(backend: OpenAIBackend) -> tuple[float, float]:
    start = time.perf_counter()
    first = 0.0
    request = ChatRequest(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    async for chunk in backend.stream_chat(request):
        if not first and chunk.content:
            first = time.perf_counter() - start
    return first, time.perf_counter() - start


async def _measure(base_url: str, requests: int, concurrency: int, via_backend: bool) -> list[str]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    backend = OpenAIBackend(BackendConfig(name="bench", base_url=base_url, api_key="bench", dialect="openai"))
    results: list[tuple[float, float]] = []
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            results.append(await (_backend_call(backend) if via_backend else _sdk_call(client)))

    for _ in range(min(20, requests)):  # warm up connections
        await (_backend_call(backend) if via_backend else _sdk_call(client))
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await client.close()
    await backend.aclose()
    firsts = [r[0] for r in results]
    totals = [r[1] for r in results]
    return [
        "loom.llm backend" if via_backend else "openai SDK",
        str(concurrency),
        f"{_pct(firsts, 0.5):.2f}",
        f"{_pct(firsts, 0.95):.2f}",
        f"{_pct(totals, 0.5):.2f}",
        f"{_pct(totals, 0.95):.2f}",
        f"{len(results) / elapsed:.0f}",
        f"{statistics.mean(totals) * 1000:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--process", action="store_true", help="run the fake as a separate process")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    fake: FakeUpstream | FakeUpstreamProcess = FakeUpstreamProcess(record=False) if args.process else FakeUpstream()
    with fake:
        fake.set_default(REPLY)
        rows = [
            asyncio.run(_measure(fake.base_url, args.requests, level, via_backend))
            for level in levels
            for via_backend in (False, True)
        ]
    header = ["client", "conc", "ttft p50", "ttft p95", "total p50", "total p95", "calls/s", "mean ms"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
