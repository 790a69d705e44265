"""How fast the console opens big things, measured in the browser (headless Chromium, as the tests drive it).

    .venv/bin/python -m bench.console_bench [--threads 10000] [--messages 1000] [--loads 5] [--backends sqlite,postgres]

Seeds a real `loom serve` (SQLite, or PostgreSQL with --backends postgres) with a project of `--threads` threads
and one thread of `--messages` messages and a few runs (their model is the scripted fake upstream), then times
page-ready in Chromium: from the navigation's start to the moment the page marks itself ready
(`main[data-state=ready]`: data fetched and in the page) and its next frame is laid out, read from the page's own
clock (`performance.now()`). Pages: the threads list (newest first, the first page of 50 with counts and last run),
a metadata search over all the threads, and the big thread by deep link (all its messages, its runs and the
steps of the newest ones). Prints the first (cold) and the median of `--loads` warm loads; target < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx
from playwright.sync_api import sync_playwright
from tests.console.conftest import CHROMIUM, CHROMIUM_ARGS, KEY_SLOT
from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer

KEY = "sk-bench"
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
TARGET_S = 1.0

# Records, in the page, when `main` first says ready after a navigation.
READY_PROBE = """
(() => {
  const mark = () => {
    const main = document.getElementById('main');
    if (!main) return false;
    new MutationObserver(() => {
      if (main.dataset.state === 'ready' && window.__readyAt === undefined) {
        window.__readyAt = null;
        // Ready once rendered: the first frame after the data is in the page (style and layout included).
        requestAnimationFrame(() => setTimeout(() => (window.__readyAt = performance.now()), 0));
      }
    }).observe(main, { attributes: true, attributeFilter: ['data-state'] });
    return true;
  };
  if (!mark()) document.addEventListener('DOMContentLoaded', mark);
})();
"""


async def seed(base: str, threads: int, messages: int) -> tuple[str, str]:
    """`threads` threads (in batches, concurrently) and one thread of `messages` messages with 5 runs."""
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=60, limits=limits) as client:
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                body = {
                    "metadata": {"customer": f"c{i % 500}", "n": str(i)},
                    "messages": [{"role": "user", "content": f"hello {i}"}],
                }
                (await client.post("/threads", json=body)).raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(threads - 1)))
        print(f"  seeded {threads - 1} threads in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        assistant = (await client.post("/assistants", json={"model": "gpt-4o", "name": "bench"})).json()
        big = (await client.post("/threads", json={"metadata": {"size": "big"}})).json()["id"]
        runs = 5
        for i in range(messages - 2 * runs):
            role = "user" if i % 2 == 0 else "assistant"
            text = f"Message {i}: " + "lorem ipsum dolor sit amet " * 4
            (await client.post(f"/threads/{big}/messages", json={"role": role, "content": text})).raise_for_status()
        for _ in range(runs):
            await client.post(f"/threads/{big}/messages", json={"role": "user", "content": "and now?"})
            run = (await client.post(f"/threads/{big}/runs", json={"assistant_id": assistant["id"]})).json()
            while run["status"] in ("queued", "in_progress"):
                await asyncio.sleep(0.05)
                run = (await client.get(f"/threads/{big}/runs/{run['id']}")).json()
        count = 0
        after = None
        while True:
            page = (
                await client.get(
                    f"/threads/{big}/messages", params={"limit": 100, **({"after": after} if after else {})}
                )
            ).json()
            count += len(page["data"])
            if not page["has_more"]:
                break
            after = page["last_id"]
        print(f"  big thread {big}: {count} messages, {runs} runs", file=sys.stderr)
        return big, assistant["id"]


def time_pages(origin: str, pages: dict[str, str], loads: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_init_script(f"sessionStorage.setItem({json.dumps(KEY_SLOT)}, {json.dumps(KEY)})")
        context.add_init_script(READY_PROBE)
        page = context.new_page()
        for name, path in pages.items():
            times = []
            for _ in range(loads + 1):
                page.goto(origin + path)
                page.wait_for_function("() => typeof window.__readyAt === 'number'", timeout=60_000)
                times.append(float(page.evaluate("window.__readyAt")) / 1000)
            out[name] = times
            if name == "thread":
                shown = page.locator("#messages .message").count()
                print(f"  thread page shows {shown} messages", file=sys.stderr)
        browser.close()
    return out


def run_backend(backend: str, threads: int, messages: int, loads: int) -> list[dict[str, Any]]:
    with (
        FakeUpstream() as upstream,
        LoomServer(
            database_url=database_url_for(backend), api_keys=(KEY,), upstream_base_url=upstream.base_url
        ) as server,
    ):
        big, _ = asyncio.run(seed(server.base_url, threads, messages))
        origin = f"http://127.0.0.1:{server.port}"
        pages = {
            "threads list (10k)": "/console/threads",
            "threads search (key=value)": "/console/threads?q=customer%3Dc123",
            "thread": f"/console/threads/{big}",
        }
        api_times = []
        for _ in range(5):
            started = time.perf_counter()
            httpx.get(f"{origin}/console/api/threads", headers=HEADERS, params={"limit": 50}).raise_for_status()
            api_times.append(time.perf_counter() - started)
        print(
            f"  GET /console/api/threads?limit=50: median {statistics.median(api_times) * 1000:.1f} ms", file=sys.stderr
        )
        results = []
        for name, times in time_pages(origin, pages, loads).items():
            warm = statistics.median(times[1:])
            results.append(
                {"backend": backend, "page": name, "cold_s": times[0], "warm_median_s": warm, "ok": warm < TARGET_S}
            )
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--backends", default="sqlite")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        print(f"{backend}:", file=sys.stderr)
        rows += run_backend(backend, args.threads, args.messages, args.loads)
    print(f"{'backend':<10}{'page':<30}{'cold':>9}{'warm p50':>10}  target < {TARGET_S:.0f} s")
    for r in rows:
        print(
            f"{r['backend']:<10}{r['page']:<30}{r['cold_s']:>8.3f}s{r['warm_median_s']:>9.3f}s  {'ok' if r['ok'] else 'SLOW'}"
        )


if __name__ == "__main__":
    main()
