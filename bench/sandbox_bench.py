"""The code-interpreter sandbox's latencies and memory, beside a bare `python -c pass` in the same sandbox.

    .venv/bin/python bench/sandbox_bench.py [--runs 200] [--sessions 10]

Prints one table:
- bare: `python -c pass` started in the same bubblewrap sandbox (sh + setpriv + bwrap + interpreter);
- warm round trip: a trivial execution in a session that is already running (target p50 <= 10 ms);
- new session, pool warm: a new key's first execution, with a started kernel waiting (target <= 100 ms);
- cold kernel start: a kernel started from nothing (what the pool hides);
- idle session memory: RSS and PSS of one idle session's processes (target <= 80 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from loom.config import Settings
from loom.sandbox.kernel import host_pids
from loom.sandbox.manager import SandboxManager


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def row(name: str, ms: list[float], target: str = "") -> str:
    return (
        f"| {name:<34} | {len(ms):>4} | {statistics.median(ms):>8.2f} | {pct(ms, 0.95):>8.2f} | "
        f"{min(ms):>8.2f} | {target:<10} |"
    )


def memory_of(pids: list[int]) -> tuple[float, float]:
    """(RSS, PSS) in MB, summed over the processes."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0])
            elif key == "Pss":
                pss += int(rest.split()[0])
    return rss / 1024, pss / 1024


async def bare_python(manager: SandboxManager, runs: int) -> list[float]:
    """`python -c pass` with the very launch chain a kernel gets (its own volume, cgroup, uid, namespaces)."""
    pool = manager.pool
    assert pool is not None
    launcher = pool.launcher
    volume = await pool.new_volume()
    times: list[float] = []
    try:
        for _ in range(runs):
            spec = launcher.prepare(volume)
            cut = spec.argv.index("--", spec.argv.index(launcher.bwrap or "bwrap"))
            argv = [*spec.argv[: cut + 1], "/opt/loom/env/bin/python", "-I", "-c", "pass"]
            t0 = time.perf_counter()
            proc = subprocess.run(argv, env=spec.env, pass_fds=spec.pass_fds, capture_output=True)  # noqa: ASYNC221
            times.append((time.perf_counter() - t0) * 1000)
            spec.close_fds()
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.decode()[-500:])
            if spec.cgroup is not None:
                spec.cgroup.remove()
            shutil.rmtree(spec.runtime_dir, ignore_errors=True)
    finally:
        await pool.destroy_volume(volume)
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--bare", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = Path(os.environ.get("LOOM_SANDBOX_ENV", str(Path(__file__).resolve().parents[1] / ".venv-sandbox")))
        settings = Settings(
            data_dir=Path(tmp), sandbox_env=env, sandbox_pool_size=1, sandbox_max_sessions=args.sessions + 4
        )
        manager = SandboxManager(settings)
        t0 = time.perf_counter()
        await manager.start()
        start_ms = (time.perf_counter() - t0) * 1000

        bare = await bare_python(manager, args.bare)

        box = await manager.session("warm")
        for _ in range(20):
            await box.execute("pass")
        warm: list[float] = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            r = await box.execute(f"x = {i}")
            warm.append((time.perf_counter() - t0) * 1000)
            assert r.status == "ok"
        printed: list[float] = []
        for i in range(args.runs // 4):
            t0 = time.perf_counter()
            r = await box.execute(f"print({i})")
            printed.append((time.perf_counter() - t0) * 1000)

        pool = manager.pool
        assert pool is not None
        first: list[float] = []
        cold: list[float] = []
        for i in range(args.sessions):
            for _ in range(300):  # wait until the pool has a started kernel again
                if manager.pooled >= 1 and not pool.filling:
                    break
                await asyncio.sleep(0.02)
            t0 = time.perf_counter()
            s = await manager.session(f"new-{i}")
            r = await s.execute("print('hi')")
            first.append((time.perf_counter() - t0) * 1000)
            assert r.logs == "hi\n", r
            await manager.close_session(f"new-{i}")
            # A cold start: what a session costs when the pool is empty.
            t0 = time.perf_counter()
            vol = await pool.new_volume()
            kernel = await pool.start_kernel(vol)
            cold.append((time.perf_counter() - t0) * 1000)
            await kernel.kill()
            await pool.destroy_volume(vol)

        idle = await manager.session("idle")
        await idle.execute("pass")
        await asyncio.sleep(1.0)
        pid = idle.kernel.pid
        assert pid is not None
        pids = host_pids(pid)
        rss, pss = memory_of(pids)
        cg = idle.kernel.spec.cgroup
        cg_mb = (cg.memory_usage() or 0) / 2**20 if cg is not None else float("nan")
        await manager.aclose()

    print()
    print(
        f"sandbox: volumes={manager.volume_kind}, cgroups={manager.cgroups.describe()}, manager start {start_ms:.0f} ms"
    )
    print()
    print(f"| {'measure (ms)':<34} | {'n':>4} | {'p50':>8} | {'p95':>8} | {'min':>8} | {'target':<10} |")
    print(f"|{'-' * 36}|{'-' * 6}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    print(row("bare `python -c pass` in bwrap", bare))
    print(row("warm round trip (x = i)", warm, "<= 10"))
    print(row("warm round trip (print(i))", printed, "<= 10"))
    print(row("new session, pool warm", first, "<= 100"))
    print(row("cold kernel start (no pool)", cold))
    print()
    print(f"| {'idle session memory':<34} | {'MB':>8} | {'target':<10} |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 12}|")
    print(f"| {'RSS (' + str(len(pids)) + ' processes)':<34} | {rss:>8.1f} | {'':<10} |")
    print(f"| {'PSS':<34} | {pss:>8.1f} | {'<= 80':<10} |")
    print(f"| {'cgroup memory.usage (incl. cache)':<34} | {cg_mb:>8.1f} | {'':<10} |")


if __name__ == "__main__":
    asyncio.run(main())
