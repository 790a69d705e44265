"""API throughput and latency of the foundation endpoints, on SQLite and PostgreSQL.

    .venv/bin/python -m bench.api_bench [--seconds 5] [--concurrency 16] [--backends sqlite,postgres]

Starts a real `loom serve` subprocess per database (as the contract tests do) and drives it from this
process with an asyncio load generator: `--concurrency` keep-alive connections, each with one request in
flight, speaking HTTP/1.1 directly on asyncio streams (httpx costs more CPU per request than the server
does, and on a 2-core machine the generator would then measure itself). For each scenario it prints
requests/s and p50/p99 latency, and the targets for SQLite: >= 1,000 retrieve-assistant/s and
>= 500 create-message/s, p99 < 50 ms.

Scenarios: create-message (POST /threads/{id}/messages, one thread per client), retrieve-assistant
(GET /assistants/{id}), list-messages (GET /threads/{id}/messages?limit=100 on a thread of 100 messages).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support.server import LoomServer

KEY = "sk-bench"
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
TARGETS = {"retrieve-assistant": 1000.0, "create-message": 500.0}
P99_TARGET_MS = 50.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    backend: str
    scenario: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    server_cpu_s: float = 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per request: steadier than req/s on a shared machine."""
        return 1000 * self.server_cpu_s / self.requests if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx spends ~2 ms of CPU per request in the client; on a 2-core machine the load generator then
    measures itself. This one parses only the status line and Content-Length.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {KEY}\r\nOpenAI-Beta: assistants=v2\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        length = 0
        for line in headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


Request = Callable[[RawConnection, int, int], Awaitable[tuple[int, bytes]]]


async def _drive(
    host: str, port: int, request: Request, concurrency: int, seconds: float, warmup: float
) -> tuple[int, int, float, list[float]]:
    latencies: list[float] = []
    errors = 0
    counted = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def worker(index: int) -> None:
        nonlocal errors, counted
        conn = RawConnection(host, port)
        n = 0
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                status, _body = await request(conn, index, n)
                t1 = time.perf_counter()
                n += 1
                if t0 >= measure_from:
                    counted += 1
                    latencies.append((t1 - t0) * 1000)
                    if status != 200:
                        errors += 1
        finally:
            conn.close()

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return counted, errors, seconds, latencies


async def _bench_backend(backend: str, url: str, seconds: float, concurrency: int) -> list[Result]:
    results: list[Result] = []
    with LoomServer(database_url=url, api_keys=(KEY,)) as server:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=server.base_url, headers=HEADERS, limits=limits, timeout=30) as client:
            assistant = (await client.post("/assistants", json={"model": "gpt-4o", "name": "bench"})).json()["id"]
            threads = [(await client.post("/threads", json={})).json()["id"] for _ in range(concurrency)]
            listed = (await client.post("/threads", json={})).json()["id"]
            for i in range(100):
                await client.post(f"/threads/{listed}/messages", json={"role": "user", "content": f"message {i}"})

            prefix = "/v1"

            async def create_message(c: RawConnection, index: int, n: int) -> tuple[int, bytes]:
                body = json.dumps({"role": "user", "content": f"Hello number {n}", "metadata": {"n": str(n)}})
                return await c.request("POST", f"{prefix}/threads/{threads[index]}/messages", body.encode())

            async def retrieve_assistant(c: RawConnection, index: int, n: int) -> tuple[int, bytes]:
                return await c.request("GET", f"{prefix}/assistants/{assistant}")

            async def list_messages(c: RawConnection, index: int, n: int) -> tuple[int, bytes]:
                return await c.request("GET", f"{prefix}/threads/{listed}/messages?limit=100")

        scenarios: list[tuple[str, Request]] = [
            ("create-message", create_message),
            ("retrieve-assistant", retrieve_assistant),
            ("list-messages", list_messages),
        ]
        assert server.proc is not None
        for name, request in scenarios:
            warm = asyncio.create_task(_drive("127.0.0.1", server.port, request, concurrency, seconds, 1.0))
            await asyncio.sleep(1.0)  # the warm-up second is not measured, neither for latency nor for CPU
            cpu_start = _cpu_seconds(server.proc.pid)
            count, errors, secs, lat = await warm
            server_cpu = _cpu_seconds(server.proc.pid) - cpu_start
            results.append(Result(backend, name, count, errors, secs, lat, server_cpu))
            print(f"  {backend:<8} {name:<19} {count / secs:8.0f} req/s", file=sys.stderr)
    return results


def _table(results: list[Result], concurrency: int) -> str:
    lines = [
        f"{'backend':<9} {'scenario':<19} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} "
        f"{'errors':>6}  target",
        "-" * 100,
    ]
    for r in results:
        target = ""
        if r.backend == "sqlite" and r.scenario in TARGETS:
            ok = r.rps >= TARGETS[r.scenario] and r.pct(0.99) < P99_TARGET_MS
            target = f">= {TARGETS[r.scenario]:.0f}/s, p99 < {P99_TARGET_MS:.0f} ms: {'met' if ok else 'MISSED'}"
        lines.append(
            f"{r.backend:<9} {r.scenario:<19} {r.rps:8.0f} {r.pct(0.50):8.1f} {r.pct(0.99):8.1f} "
            f"{r.cpu_ms_per_request:10.2f} {r.errors:6d}  {target}"
        )
    lines.append(
        f"({concurrency} concurrent clients, keep-alive, load generator in a separate process; cpu ms/req is "
        f"the server process's CPU time per request, all threads; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results: list[Result] = []
    for backend in args.backends.split(","):
        url = ""
        if backend == "postgres":
            from tests.support.postgres import new_database

            url = new_database("bench")
        results += asyncio.run(_bench_backend(backend, url, args.seconds, args.concurrency))
    print(_table(results, args.concurrency))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
