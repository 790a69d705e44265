"""Search latency (p50/p99 of one query, end to end: embed the query, vector + keyword, fuse, fetch).

    .venv/bin/python bench/retrieval_latency.py [--sizes 10000,100000] [--postgres-sizes 100000] [--reuse NAME]
        [--embedder wordllama|minilm]

`--reuse NAME` keeps each PostgreSQL table in a database named `NAME_<size>` (under pgserver's data
dir, LOOM_TEST_PGDATA) and reuses it on later runs, so a million chunks are loaded once; drop it with
`--drop`. Without it every run loads into a fresh database that is dropped afterwards.

Chunks are synthetic: 150-word texts drawn from SciFact's word frequencies (read from
../shared/data/ir/scifact, nothing copied) and random unit vectors of the embedder's size (`--embedder`, default minilm);
queries are SciFact's real test claims. Baseline printed alongside: the query embedding alone.

SQLite, issue 15 (exact per-store BM25 over in-memory postings vs main's FTS5), alternating runs
main, branch, main, branch on the shared 2-core machine (load 4-10 from other work; the two values
are the two rounds, ms):

    size  what                          main            branch
    10k   keyword p50 / p99             20 / 70, 20 / 425     2.1 / 8, 2.2 / 14
    10k   hybrid p50 / p99              37 / 142, 65 / 312    7.9 / 41, 8.9 / 60
    10k   first search (cold), RSS      881, 2494 (+92 MB)    1035, 1774 (+137 MB)
    10k   first search after add / del  163 / 287, 474 / 509  31 / 53, 50 / 24
    100k  keyword p50 / p99             48 / 179, 96 / 372    8.9 / 118, 7.4 / 47
    100k  hybrid p50 / p99              164 / 387, 233 / 511  63 / 421, 41 / 160
    100k  first search (cold), RSS      1506, 4269 (+183 MB)  21080*, 5614 (+232, +270 MB)
    100k  first search after add / del  1770 / 1794, 3419 / 2612   319 / 1824*, 95 / 113

(* round 1 of the branch ran beside a test run, and before deletes stopped copying the vector
matrix.) Ingestion (bench/retrieval_ingest.py, wordllama, 20 text files): main 88, 93 chunks/s,
branch 100, 95. The cold load is the branch's weak point: ~2x main's (it reads and sorts every
chunk's postings besides the vectors), down from ~4x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from loom.retrieval.chunking import Chunk  # noqa: E402
from loom.retrieval.embedding import Embedder, WordLlamaEmbedder  # noqa: E402
from loom.retrieval.index import ChunkIndex  # noqa: E402
from loom.retrieval.search import SearchMode, search  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ir" / "scifact"
WORDS_PER_CHUNK = 150
CHUNKS_PER_FILE = 1000
DIMS = 256


def vocabulary() -> tuple[list[str], np.ndarray, list[str]]:
    counts: Counter[str] = Counter()
    with open(DATA / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            counts.update(re.findall(r"[a-z0-9]+", (d["title"] + " " + d["text"]).lower()))
    words = [w for w, _ in counts.most_common(30000)]
    freqs = np.array([counts[w] for w in words], dtype=np.float64)
    with open(DATA / "queries.jsonl") as f:
        queries = [json.loads(line)["text"] for line in f]
    return words, freqs / freqs.sum(), queries


def synthetic(n: int, seed: int, words: list[str], probs: np.ndarray) -> tuple[list[Chunk], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(len(words), size=(n, WORDS_PER_CHUNK), p=probs)
    texts = [" ".join(words[i] for i in row) for row in ids]
    vectors = rng.normal(size=(n, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [Chunk(i % CHUNKS_PER_FILE, t, 0, len(t), WORDS_PER_CHUNK) for i, t in enumerate(texts)]
    return chunks, vectors


async def fill(index: ChunkIndex, n: int, words: list[str], probs: np.ndarray) -> float:
    start = time.perf_counter()
    for f in range(0, n, CHUNKS_PER_FILE):
        chunks, vectors = synthetic(min(CHUNKS_PER_FILE, n - f), f, words, probs)
        file_id = f"file-{f // CHUNKS_PER_FILE}"
        await index.put_file("vs_bench", file_id, f"{file_id}.txt", {"part": f // CHUNKS_PER_FILE})
        await index.add_chunks("vs_bench", file_id, chunks, vectors)
    return time.perf_counter() - start


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(
    index: ChunkIndex, embedder: Embedder, queries: list[str], label: str, chunks: int, warm: bool = False
) -> None:
    await search(index, embedder, ["vs_bench"], queries[0])  # warm caches (SQLite loads the matrix)
    if warm:  # a server in steady state: every query's index pages and rows read once already
        for q in queries:
            await search(index, embedder, ["vs_bench"], q)
    base: list[float] = []
    for q in queries:
        t0 = time.perf_counter()
        await embedder.embed([q])
        base.append((time.perf_counter() - t0) * 1000)
    print(f"{label:<28} {'embed query only':<22} p50 {pct(base, 50):7.2f} ms  p99 {pct(base, 99):7.2f} ms")
    modes: list[SearchMode] = ["vector", "keyword", "hybrid"]
    for mode in modes:
        lat: list[float] = []
        for q in queries:
            t0 = time.perf_counter()
            await search(index, embedder, ["vs_bench"], q, mode=mode, max_num_results=10)
            lat.append((time.perf_counter() - t0) * 1000)
        print(f"{label:<28} {mode:<22} p50 {pct(lat, 50):7.2f} ms  p99 {pct(lat, 99):7.2f} ms")
    lat = []
    flt = {"type": "lt", "key": "part", "value": 10}
    for q in queries:
        t0 = time.perf_counter()
        await search(index, embedder, ["vs_bench"], q, filters=flt)
        lat.append((time.perf_counter() - t0) * 1000)
    share = f"hybrid + filter ({min(1.0, 10 * CHUNKS_PER_FILE / chunks):.0%})"  # files 0-9 of the store
    print(f"{label:<28} {share:<22} p50 {pct(lat, 50):7.2f} ms  p99 {pct(lat, 99):7.2f} ms")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def first_searches(
    index: ChunkIndex, embedder: Embedder, query: str, n: int, words: list[str], probs: np.ndarray
) -> None:
    """SQLite: the first hybrid search (the store's cache is built), the RSS that cache added, and the
    first search after a write: one more file added (1000 chunks), then that file deleted."""
    rss = rss_mb()
    t0 = time.perf_counter()
    await search(index, embedder, ["vs_bench"], query)
    cold = (time.perf_counter() - t0) * 1000
    print(f"sqlite {n:<21} first search {cold:7.0f} ms, cached store RSS +{rss_mb() - rss:.0f} MB")
    chunks, vectors = synthetic(CHUNKS_PER_FILE, n + 1, words, probs)
    await index.put_file("vs_bench", "file-extra", "file-extra.txt", {"part": -1})
    await index.add_chunks("vs_bench", "file-extra", chunks, vectors)
    t0 = time.perf_counter()
    await search(index, embedder, ["vs_bench"], query)
    added = (time.perf_counter() - t0) * 1000
    await index.delete_file("vs_bench", "file-extra")
    t0 = time.perf_counter()
    await search(index, embedder, ["vs_bench"], query)
    deleted = (time.perf_counter() - t0) * 1000
    print(f"sqlite {n:<21} first search after adding a file {added:7.0f} ms, after deleting it {deleted:7.0f} ms")


async def build_hnsw(engine: AsyncEngine) -> float:
    from loom.retrieval.schema import hnsw_index_statement

    start = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(text("SET maintenance_work_mem = '4GB'"))
        await conn.execute(text("SET max_parallel_maintenance_workers = 1"))
        await conn.execute(text(hnsw_index_statement(DIMS)))
        await conn.execute(text("ANALYZE retrieval_chunks"))
    return time.perf_counter() - start


def kept_database(name: str) -> tuple[str, bool]:
    """The URL of a bench database that outlives this run, and whether it is already loaded (a
    database left by an interrupted load has no `bench_meta` table: it is dropped and made again)."""
    from tests.support.postgres import pg_server, url_for_database

    server = pg_server()
    url = url_for_database(name)
    if "(1 row)" in server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';"):
        probe = server.psql(f"\\c {name}\nSELECT to_regclass('bench_meta') IS NOT NULL AS loaded;")
        if " t\n" in probe:
            return url, True
        server.psql(f"DROP DATABASE {name} WITH (FORCE);")
    server.psql(f"CREATE DATABASE {name};")
    return url, False


def drop_kept(name: str) -> None:
    from tests.support.postgres import pg_server

    pg_server().psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);")


PG_SETTINGS = (
    "server_version",
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "jit",
    "max_parallel_workers_per_gather",
    "random_page_cost",
)


async def show_settings(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        values = [f"{s}={(await conn.execute(text(f'SHOW {s}'))).scalar_one()}" for s in PG_SETTINGS]
        ext = (await conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))).scalar()
    print("[postgres settings] " + " ".join(values) + f" pgvector={ext}")


async def load_postgres(url: str, n: int, words: list[str], probs: np.ndarray) -> AsyncEngine:
    from loom.retrieval.pg_index import PostgresChunkIndex

    engine = create_async_engine(url)
    pg = PostgresChunkIndex(engine)
    await pg.create_schema()
    async with engine.begin() as conn:  # bulk load first, build the graph once afterwards
        await conn.execute(text(f"DROP INDEX IF EXISTS retrieval_chunks_hnsw_{DIMS}"))
    # ... which the index would otherwise make again at the first chunks of a size the migrations don't
    # index (384-d: MiniLM), and grow chunk by chunk: ~4x slower, slower the larger the graph.
    pg._hnsw_ready.add(DIMS)
    seconds = await fill(pg, n, words, probs)
    build = await build_hnsw(engine)
    async with engine.connect() as conn:  # what autovacuum would do soon: merge GIN's pending list
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM (ANALYZE) retrieval_chunks"))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE bench_meta (chunks int, load_s float8, hnsw_s float8)"))
        await conn.execute(text("INSERT INTO bench_meta VALUES (:n, :l, :h)"), {"n": n, "l": seconds, "h": build})
    return engine


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--postgres-sizes", default="100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reuse", default="", help="keep PostgreSQL tables in databases NAME_<size>")
    parser.add_argument("--drop", action="store_true", help="with --reuse: drop those databases at the end")
    parser.add_argument("--warm", action="store_true", help="run every query once before timing")
    parser.add_argument("--embedder", default="minilm", choices=("wordllama", "minilm"), help="embeds the queries")
    args = parser.parse_args()
    words, probs, all_queries = vocabulary()
    queries = all_queries[: args.queries]
    global DIMS
    embedder: Embedder
    if args.embedder == "minilm":
        from loom.retrieval.minilm import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    else:
        embedder = WordLlamaEmbedder()
    DIMS = embedder.dimensions
    print(f"embedder {embedder.name}")
    print(f"{len(queries)} queries, {WORDS_PER_CHUNK} words/chunk, {DIMS}-d vectors, hybrid = vector + BM25 fused")

    from loom.retrieval.sqlite_index import SQLiteChunkIndex

    for n in [int(s) for s in args.sizes.split(",") if s]:
        with tempfile.TemporaryDirectory() as tmp:
            engine = create_async_engine(f"sqlite+aiosqlite:///{tmp}/lat.db")
            index = SQLiteChunkIndex(engine)
            await index.create_schema()
            seconds = await fill(index, n, words, probs)
            print(f"\n[sqlite] {n} chunks loaded in {seconds:.1f}s ({n / seconds:.0f} chunks/s)")
            await first_searches(index, embedder, queries[0], n, words, probs)
            await measure(index, embedder, queries, f"sqlite {n}", n, args.warm)
            await engine.dispose()

    from tests.support.postgres import drop_created_databases, new_database

    from loom.retrieval.pg_index import PostgresChunkIndex

    for n in [int(s) for s in args.postgres_sizes.split(",") if s]:
        if args.reuse:
            url, loaded = kept_database(f"{args.reuse}_{n}")
        else:
            url, loaded = new_database("lat"), False
        if loaded:
            engine = create_async_engine(url)
            pg = PostgresChunkIndex(engine)
            await pg.create_schema()  # brings a kept database up to the current schema
        else:
            engine = await load_postgres(url, n, words, probs)
            pg = PostgresChunkIndex(engine)
        async with engine.connect() as conn:
            chunks, seconds, build = (await conn.execute(text("SELECT * FROM bench_meta"))).one()
        reused = " (kept database, loaded earlier)" if loaded else ""
        print(f"\n[postgres] {chunks} chunks loaded in {seconds:.1f}s, HNSW built in {build:.1f}s{reused}")
        await show_settings(engine)
        await measure(pg, embedder, queries, f"postgres {n}", chunks, args.warm)
        await engine.dispose()
        if args.reuse and args.drop:
            drop_kept(f"{args.reuse}_{n}")
    drop_created_databases()


if __name__ == "__main__":
    asyncio.run(main())
