"""Webhooks: what an endpoint costs a run, and how soon its event arrives.

    python -m bench.webhooks_bench [--requests 100] [--postgres]

One `loom serve` with two projects, the fake upstream as its own process, a receiver on loopback:
1. Streaming runs, interleaved between a project with no endpoint (the baseline: the outbox hook finds
   nothing) and a project with an endpoint wanting `thread.run.completed`: TTFT and whole-run time
   p50/p95 side by side.
2. `create_and_poll` (SDK) in both projects, interleaved, p50/p95.
3. Delivery latency: from the status change (the delivery row's `created_at`, written in the run's
   completing transaction) to the receiver's arrival time, p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import openai
import sqlalchemy as sa
from tests.fakes.upstream import FakeUpstreamProcess, Turn
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.webhooks.receiver import Receiver

from bench.runs_bench import REPLY, pct, table
from loom.store.db import Database
from loom.webhooks.tables import webhook_deliveries


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "OpenAI-Beta": "assistants=v2"}


async def streamed_run(http: httpx.AsyncClient, base: str, key: str, assistant_id: str) -> tuple[float, float]:
    """A new thread, then a streaming run on it: (time to the first delta, whole time), in seconds."""
    made = await http.post(
        f"{base}/threads", json={"messages": [{"role": "user", "content": "hi"}]}, headers=headers(key)
    )
    made.raise_for_status()
    start = time.perf_counter()
    first = 0.0
    body = {"assistant_id": assistant_id, "stream": True}
    url = f"{base}/threads/{made.json()['id']}/runs"
    async with http.stream("POST", url, json=body, headers=headers(key)) as response:
        async for line in response.aiter_lines():
            if not first and line == "event: thread.message.delta":
                first = time.perf_counter() - start
    if not first:
        raise RuntimeError("no delta")
    return first, time.perf_counter() - start


async def runs(server: LoomServer, keys: dict[str, str], n: int) -> dict[str, list[tuple[float, float]]]:
    base = server.base_url
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in keys}
    async with httpx.AsyncClient(timeout=120) as http:
        assistants = {}
        for name, key in keys.items():
            made = await http.post(f"{base}/assistants", json={"model": "gpt-4o"}, headers=headers(key))
            assistants[name] = made.json()["id"]
        for i in range(n + 10):
            for name, key in keys.items():
                timing = await streamed_run(http, base, key, assistants[name])
                if i >= 10:  # warm-up
                    out[name].append(timing)
    return out


def polled(server: LoomServer, keys: dict[str, str], n: int) -> dict[str, list[float]]:
    clients = {name: openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) for name, key in keys.items()}
    assistants = {name: c.beta.assistants.create(model="gpt-4o").id for name, c in clients.items()}
    out: dict[str, list[float]] = {name: [] for name in keys}
    for _ in range(n):
        for name, client in clients.items():
            thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
            start = time.perf_counter()
            run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistants[name])
            out[name].append(time.perf_counter() - start)
            assert run.status == "completed", run.status
    for client in clients.values():
        client.close()
    return out


async def created_at(url: str) -> dict[str, float]:
    db = Database(url)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(sa.select(webhook_deliveries.c.id, webhook_deliveries.c.created_at))).all()
        return {r[0]: r[1] for r in rows}
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()

    with FakeUpstreamProcess(record=False) as fake, Receiver() as receiver:
        fake.set_default(Turn.reply(REPLY, chunk_size=4))
        server = LoomServer(
            database_url=new_database() if args.postgres else "",
            upstream_base_url=fake.base_url,
            extra_env={"LOOM_WEBHOOKS_ALLOW_PRIVATE": "true"},
        )
        server.env.pop("LOOM_POLL_AFTER_MS", None)
        with server:
            keys = {"no endpoint": "sk-test-default", "endpoint": server.new_project_key("hooked")}
            with httpx.Client(base_url=server.base_url, headers=headers(keys["endpoint"])) as api:
                made = api.post(
                    "/loom/webhooks", json={"url": receiver.url("/bench"), "event_types": ["thread.run.completed"]}
                )
                made.raise_for_status()
            streamed = asyncio.run(runs(server, keys, args.requests))
            poll = polled(server, keys, args.requests)
            expected = len(streamed["endpoint"]) + 10 + len(poll["endpoint"])
            got = receiver.wait("/bench", expected, timeout=60)
            url = server.database_url or f"sqlite+aiosqlite:///{server.data_dir / 'loom.db'}"
            changed = asyncio.run(created_at(url))
    latencies = [r.at - changed[r.headers["webhook-id"]] for r in got]
    rows: list[list[str]] = []
    for label, index in (("TTFT", 0), ("whole run", 1)):
        for q in (0.5, 0.95):
            base_v, hook_v = (pct([t[index] for t in streamed[k]], q) for k in keys)
            rows.append([f"{label} p{int(q * 100)}", f"{base_v:.2f}", f"{hook_v:.2f}", f"{hook_v - base_v:+.2f}"])
    for q in (0.5, 0.95):
        base_v, hook_v = (pct(poll[k], q) for k in keys)
        rows.append([f"create_and_poll p{int(q * 100)}", f"{base_v:.2f}", f"{hook_v:.2f}", f"{hook_v - base_v:+.2f}"])
    db = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\nwebhooks bench ({db}, {args.requests} runs per project per phase, interleaved), ms")
    table(["", "no endpoint", "endpoint", "difference"], rows)
    print(f"\ndelivery latency (status change → receiver), {len(latencies)} deliveries, ms")
    lat_rows: list[list[str]] = [["p50", f"{pct(latencies, 0.5):.2f}"], ["p99", f"{pct(latencies, 0.99):.2f}"]]
    table(["", "latency"], lat_rows)


if __name__ == "__main__":
    main()
