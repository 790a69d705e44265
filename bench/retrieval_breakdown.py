"""Where a hybrid search's time goes on a kept PostgreSQL database, and this search against an older
`retrieval/search.py` on the same index, queries interleaved (same run, same caches).

    .venv/bin/python bench/retrieval_breakdown.py --database m1_1000000 [--before 9e5bb4f] [--queries 200]

The database is one `bench/retrieval_latency.py --reuse m1 --postgres-sizes 1000000` kept (store
`vs_bench`). Prints p50/p90/p99 (second of two passes) of: the query's embedding with its piece vectors,
the vector and keyword candidates alone, the token-vector and row fetches alone, and whole searches
(top 10) with the default ranker and with `none`, by this checkout's search and, with `--before REV`,
by `search.py` as it was at REV (the rest of the package this checkout's).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bench.retrieval_latency import kept_database, pct, vocabulary  # noqa: E402
from loom.retrieval.index import query_terms  # noqa: E402
from loom.retrieval.minilm import MiniLMEmbedder  # noqa: E402
from loom.retrieval.pg_index import PostgresChunkIndex  # noqa: E402
from loom.retrieval.rerank import embed_queries  # noqa: E402
from loom.retrieval.search import search  # noqa: E402


def search_at(rev: str, folder: str) -> Any:
    """`search` from `retrieval/search.py` as it was at `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/loom/retrieval/search.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(folder) / "search_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("search_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_before"] = module
    spec.loader.exec_module(module)
    return module.search


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--before", default="")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    queries = vocabulary()[2][: args.queries]
    url, loaded = kept_database(args.database)
    if not loaded:
        raise SystemExit(f"{args.database}: no kept bench database (bench/retrieval_latency.py --reuse makes one)")
    engine = create_async_engine(url)
    pg = PostgresChunkIndex(engine)
    emb = MiniLMEmbedder()
    store = ["vs_bench"]
    with tempfile.TemporaryDirectory() as folder:
        before = search_at(args.before, folder) if args.before else None
        t0 = time.perf_counter()
        await search(pg, emb, store, queries[0])
        print(f"first search (loads the keyword index): {time.perf_counter() - t0:.1f} s")
        steps: dict[str, Callable[[str], Awaitable[object]]] = {
            "embedding + pieces": lambda q: embed_queries(emb, [q]),
            "keyword alone": lambda q: pg.keyword_candidates(store, query_terms(q), 100),
            "hybrid": lambda q: search(pg, emb, store, q),
            "hybrid, ranker none": lambda q: search(pg, emb, store, q, ranker="none"),
        }
        if before is not None:
            steps[f"hybrid at {args.before}"] = lambda q: before(pg, emb, store, q)
            steps[f"hybrid, none, at {args.before}"] = lambda q: before(pg, emb, store, q, ranker="none")
        lat: dict[str, list[float]] = {name: [] for name in ["vector alone", "token vectors", "rows", *steps]}
        for timed in (False, True):
            for q in queries:
                vectors, _ = await embed_queries(emb, [q])
                t0 = time.perf_counter()
                found = await pg.vector_candidates(store, vectors[0], 100)
                ids = [c.chunk_id for c in found[:50]]
                seconds = {"vector alone": time.perf_counter() - t0}
                t0 = time.perf_counter()
                await pg.late_tokens(ids)
                seconds["token vectors"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                await pg.get_chunks(ids[:10])
                seconds["rows"] = time.perf_counter() - t0
                for name, step in steps.items():
                    t0 = time.perf_counter()
                    await step(q)
                    seconds[name] = time.perf_counter() - t0
                if timed:
                    for name, s in seconds.items():
                        lat[name].append(s * 1000)
    for name, ms in lat.items():
        print(f"{name:<32} p50 {pct(ms, 50):7.2f} ms  p90 {pct(ms, 90):7.2f} ms  p99 {pct(ms, 99):7.2f} ms")
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
