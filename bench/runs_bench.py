"""Run-engine overhead against the fake upstream on loopback, next to the direct call in the same run.

    python -m bench.runs_bench [--requests 100] [--concurrent 500] [--postgres] [--chunk-delay-ms 0]

1. Time to first token of a streaming run (POST …/runs stream=true → first `thread.message.delta`) vs.
   a streamed Chat Completions call made straight to the fake (→ first content chunk). Sequential.
2. `create_and_poll` (the SDK helper, the server's `openai-poll-after-ms`) end to end vs. the direct
   call's whole time (the model's own time). Sequential.
3. N concurrent streaming runs (one thread each): errors, throughput, TTFT p50/p99, and the server's
   resident memory (idle before, peak during).

The fake runs as its own process (`FakeUpstreamProcess`), Loom as a real `loom serve` subprocess;
the client side is this process (plain httpx for the wire timings, the SDK for create_and_poll).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
from tests.fakes.upstream import FakeUpstreamProcess, Turn
from tests.support.postgres import new_database
from tests.support.server import LoomServer

REPLY = "The quick brown fox jumps over the lazy dog."
HEADERS = {"Authorization": "Bearer sk-test-default", "OpenAI-Beta": "assistants=v2"}


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MB)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return total / 1024


async def direct_call(http: httpx.AsyncClient, base_url: str) -> tuple[float, float]:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    start = time.perf_counter()
    first = 0.0
    async with http.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not first and line.startswith("data: {") and '"content"' in line:
                first = time.perf_counter() - start
    return first, time.perf_counter() - start


async def new_thread(http: httpx.AsyncClient, base_url: str) -> str:
    response = await http.post(
        f"{base_url}/threads", json={"messages": [{"role": "user", "content": "hi"}]}, headers=HEADERS
    )
    response.raise_for_status()
    return str(response.json()["id"])


async def streamed_run(
    http: httpx.AsyncClient, base_url: str, thread_id: str, assistant_id: str
) -> tuple[float, float]:
    start = time.perf_counter()
    first = 0.0
    last = ""
    async with http.stream(
        "POST",
        f"{base_url}/threads/{thread_id}/runs",
        json={"assistant_id": assistant_id, "stream": True},
        headers=HEADERS,
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                last = line[7:]
                if not first and last == "thread.message.delta":
                    first = time.perf_counter() - start
    if last != "done" or not first:
        raise RuntimeError(f"stream ended on {last!r}")
    return first, time.perf_counter() - start


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


async def bench(server: LoomServer, upstream_url: str, args: argparse.Namespace) -> dict[str, Any]:
    assert server.proc is not None
    base = server.base_url
    limits = httpx.Limits(max_connections=args.concurrent + 50, max_keepalive_connections=args.concurrent + 50)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        created = await http.post(f"{base}/assistants", json={"model": "gpt-4o"}, headers=HEADERS)
        assistant = created.json()["id"]
        # Warm up both paths.
        for _ in range(10):
            await direct_call(http, upstream_url)
            await streamed_run(http, base, await new_thread(http, base), assistant)
        idle_rss = rss_mb(server.proc.pid)

        direct: list[tuple[float, float]] = []
        loom: list[tuple[float, float]] = []
        for _ in range(args.requests):  # interleaved, so both see the same machine noise
            direct.append(await direct_call(http, upstream_url))
            thread = await new_thread(http, base)
            loom.append(await streamed_run(http, base, thread, assistant))

        # create_and_poll through the SDK (sync client in a thread: it sleeps between polls).
        def poll_many() -> list[float]:
            client = openai.OpenAI(base_url=base, api_key="sk-test-default", max_retries=0)
            times = []
            for _ in range(args.requests):
                thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
                start = time.perf_counter()
                run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant)
                times.append(time.perf_counter() - start)
                assert run.status == "completed", run.status
            return times

        polled = await asyncio.to_thread(poll_many)

        # N concurrent streams.
        threads = []
        for i in range(0, args.concurrent, 50):
            threads += await asyncio.gather(*(new_thread(http, base) for _ in range(min(50, args.concurrent - i))))
        peak = idle_rss
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_mb(server.proc.pid))  # type: ignore[union-attr]
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        start = time.perf_counter()
        outcomes = await asyncio.gather(
            *(streamed_run(http, base, t, assistant) for t in threads), return_exceptions=True
        )
        elapsed = time.perf_counter() - start
        sampling = False
        await sampler
    ok = [o for o in outcomes if isinstance(o, tuple)]
    errors = [repr(o)[:200] for o in outcomes if not isinstance(o, tuple)]
    return {
        "ttft_direct_p50": pct([d[0] for d in direct], 0.5),
        "ttft_loom_p50": pct([x[0] for x in loom], 0.5),
        "ttft_direct_p95": pct([d[0] for d in direct], 0.95),
        "ttft_loom_p95": pct([x[0] for x in loom], 0.95),
        "model_time_p50": pct([d[1] for d in direct], 0.5),
        "stream_total_p50": pct([x[1] for x in loom], 0.5),
        "create_and_poll_p50": pct(polled, 0.5),
        "create_and_poll_p95": pct(polled, 0.95),
        "concurrent": args.concurrent,
        "concurrent_ok": len(ok),
        "concurrent_errors": len(errors),
        "error_samples": errors[:3],
        "concurrent_elapsed_s": elapsed,
        "concurrent_runs_per_s": len(ok) / elapsed,
        "concurrent_ttft_p50": pct([o[0] for o in ok], 0.5),
        "concurrent_ttft_p99": pct([o[0] for o in ok], 0.99),
        "concurrent_total_p99": pct([o[1] for o in ok], 0.99),
        "rss_idle_mb": idle_rss,
        "rss_peak_mb": peak,
        "mean_direct_total_ms": statistics.mean(d[1] for d in direct) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between the fake's chunks")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args()

    with FakeUpstreamProcess(record=False) as fake:
        fake.set_default(Turn.reply(REPLY, chunk_size=4, chunk_delay_s=args.chunk_delay_ms / 1000))
        server = LoomServer(database_url=new_database() if args.postgres else "", upstream_base_url=fake.base_url)
        # The server's own default poll hint, not the test fixture's 20 ms.
        server.env.pop("LOOM_POLL_AFTER_MS", None)
        with server:
            figures = asyncio.run(bench(server, fake.base_url, args))
    f = figures
    table(
        ["measure", "direct (ms)", "loom (ms)", "overhead (ms)", "target"],
        [
            [
                "TTFT p50",
                f"{f['ttft_direct_p50']:.2f}",
                f"{f['ttft_loom_p50']:.2f}",
                f"{f['ttft_loom_p50'] - f['ttft_direct_p50']:.2f}",
                "<= 5",
            ],
            [
                "TTFT p95",
                f"{f['ttft_direct_p95']:.2f}",
                f"{f['ttft_loom_p95']:.2f}",
                f"{f['ttft_loom_p95'] - f['ttft_direct_p95']:.2f}",
                "",
            ],
            [
                "create_and_poll p50",
                f"{f['model_time_p50']:.2f}",
                f"{f['create_and_poll_p50']:.2f}",
                f"{f['create_and_poll_p50'] - f['model_time_p50']:.2f}",
                "<= 20",
            ],
            [
                "create_and_poll p95",
                "",
                f"{f['create_and_poll_p95']:.2f}",
                "",
                "",
            ],
        ],
    )
    print()
    table(
        [
            "concurrent",
            "ok",
            "errors",
            "runs/s",
            "TTFT p50 ms",
            "TTFT p99 ms",
            "total p99 ms",
            "RSS idle MB",
            "RSS peak MB",
        ],
        [
            [
                str(f["concurrent"]),
                str(f["concurrent_ok"]),
                str(f["concurrent_errors"]),
                f"{f['concurrent_runs_per_s']:.1f}",
                f"{f['concurrent_ttft_p50']:.0f}",
                f"{f['concurrent_ttft_p99']:.0f}",
                f"{f['concurrent_total_p99']:.0f}",
                f"{f['rss_idle_mb']:.0f}",
                f"{f['rss_peak_mb']:.0f}",
            ]
        ],
    )
    if f["error_samples"]:
        print("errors:", *f["error_samples"], sep="\n  ")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
