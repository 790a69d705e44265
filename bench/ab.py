"""Before and after in one run: a benchmark of this tree against the same benchmark of another checkout.

    .venv/bin/python -m bench.ab --base ../loom-before [--rounds 3] runs -- --requests 100 --concurrent 200
    .venv/bin/python -m bench.ab --base ../loom-before [--rounds 3] api -- --seconds 4 --backends sqlite

The two trees run alternately (base, this, base, this, …) so that the machine's load drifts over both
alike; each tree runs its own code with its own `.venv`. The table gives, per figure, the median over the
rounds of each tree and their ratio (this / base). On a shared machine, read the ratios, not the
absolute numbers. `runs` is `bench.runs_bench` (its --json figures), `api` is `bench.api_bench` (its
table: req/s, p50, p99 and the server's CPU time per request).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
MODULES = {"runs": "bench.runs_bench", "api": "bench.api_bench"}
API_ROW = re.compile(
    r"^(?P<backend>sqlite|postgres)\s+(?P<scenario>[\w-]+)\s+(?P<rps>[\d.]+)\s+(?P<p50>[\d.]+)\s+"
    r"(?P<p99>[\d.]+)\s+(?P<cpu>[\d.]+)\s+(?P<errors>\d+)"
)


def figures(kind: str, output: str) -> dict[str, float]:
    """The numeric figures a benchmark printed."""
    if kind == "runs":
        start = output.rfind("\n{")
        raw = json.loads(output[start + 1 :] if start >= 0 else output[output.index("{") :])
        return {k: float(v) for k, v in raw.items() if isinstance(v, int | float)}
    found: dict[str, float] = {}
    for line in output.splitlines():
        m = API_ROW.match(line)
        if m is None:
            continue
        name = f"{m['backend']} {m['scenario']}"
        found[f"{name} req/s"] = float(m["rps"])
        found[f"{name} p50 ms"] = float(m["p50"])
        found[f"{name} p99 ms"] = float(m["p99"])
        found[f"{name} cpu ms/req"] = float(m["cpu"])
        found[f"{name} errors"] = float(m["errors"])
    if not found:
        raise SystemExit(f"no figures in the benchmark's output:\n{output}")
    return found


def run_once(tree: Path, kind: str, extra: list[str]) -> dict[str, float]:
    args = [str(tree / ".venv" / "bin" / "python"), "-m", MODULES[kind], *extra]
    if kind == "runs":
        args.append("--json")
    print(f"· {tree.name}: {' '.join(args[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(args, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: the benchmark failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return figures(kind, done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (with its own .venv)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("kind", choices=sorted(MODULES))
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments for the benchmark, after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    base, this = args.base.resolve(), HERE
    rounds: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
    for _ in range(args.rounds):
        rounds["base"].append(run_once(base, args.kind, extra))
        rounds["this"].append(run_once(this, args.kind, extra))
    names = [n for n in rounds["this"][0] if all(n in r for r in rounds["base"] + rounds["this"])]
    print(f"{'figure':<40} {'base (median)':>14} {'this (median)':>14} {'this/base':>10}")
    print("-" * 82)
    for name in names:
        b = statistics.median(r[name] for r in rounds["base"])
        t = statistics.median(r[name] for r in rounds["this"])
        ratio = f"{t / b:.3f}" if b else "-"
        print(f"{name:<40} {b:14.2f} {t:14.2f} {ratio:>10}")
    print(f"({args.rounds} alternating rounds; base = {base}, this = {this})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
