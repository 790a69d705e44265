"""Exact keyword ranking of large PostgreSQL stores: quality against a brute-force BM25, and its costs.

    nice -n 10 .venv/bin/python bench/retrieval_scale_quality.py [--distractors 1000000,100000] [--reuse NAME]
        [--drop] [--queries N] [--hybrid]

One vector store holds SciFact's abstracts (chunked as bench/retrieval_quality.py does) and N synthetic
distractor chunks (bench/retrieval_latency.py's generator: 150 words drawn from SciFact's word
frequencies). SciFact's documents are spread evenly among the distractor files (a few after each
file of 1000). Vectors are random unit vectors and the HNSW index is not built (`--hybrid` builds
it, then times hybrid searches as run_search does them, WordLlama query embedding included).

For SciFact's 300 judged test queries, keyword only, top 100 chunks: "loom" is
`PostgresChunkIndex.keyword_candidates` (exact MaxScore over the store's in-memory postings,
`loom.retrieval.pg_keywords`); "brute force" scores every chunk of the store from its stored keyword
columns, written out here independently (no postings, no early stop). Reported: nDCG@10 and
recall@100 over SciFact's qrels (a distractor is never relevant; each distractor chunk counts as a
document of its own), the share of queries whose top 100 is identical to brute force's, p50/p99 of
`keyword_candidates` with the store cached (second pass), the first search's load of the whole
store, the first search after another replica adds a file of 1000 chunks (a delta load) and after
it deletes that file (a full reload), the process's RSS and the cache's size.

`--reuse NAME` keeps each size's database as `NAME_<N>` for later runs (same convention as
bench/retrieval_latency.py); a database loaded by an older Loom is brought up to date first
(migration 0011's backfill, timed). `--drop` drops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from bench.retrieval_latency import CHUNKS_PER_FILE, DIMS, drop_kept, kept_database, pct, synthetic, vocabulary  # noqa: E402
from bench.retrieval_quality import load, ndcg_at_10, recall_at_100  # noqa: E402
from loom.retrieval import analysis  # noqa: E402
from loom.retrieval.chunking import chunk_text  # noqa: E402
from loom.retrieval.index import query_terms  # noqa: E402
from loom.retrieval.pg_index import PostgresChunkIndex  # noqa: E402
from loom.retrieval.schema import keyword_columns_upgrade  # noqa: E402
from loom.retrieval.search import DEFAULT_FUSION  # noqa: E402

STORE = "vs_bench"
LIMIT = max(DEFAULT_FUSION.candidates, 100)  # what run_search asks for with max_num_results=100


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIMS)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


async def load_store(url: str, n: int, corpus: dict[str, str]) -> AsyncEngine:
    """Distractor files of CHUNKS_PER_FILE chunks, each followed by its share of SciFact's documents."""
    words, probs, _ = vocabulary()
    engine = create_async_engine(url)
    pg = PostgresChunkIndex(engine)
    await pg.create_schema()
    async with engine.begin() as conn:  # keyword search only: no graph to build or to keep up to date
        await conn.execute(text(f"DROP INDEX IF EXISTS retrieval_chunks_hnsw_{DIMS}"))
    pg._hnsw_ready.add(DIMS)  # else the first chunks of that size make the index again, and grow it chunk by chunk
    rng = np.random.default_rng(7)
    docs = list(corpus)
    files = max(1, -(-n // CHUNKS_PER_FILE))
    start = time.perf_counter()
    for k in range(files):
        f = k * CHUNKS_PER_FILE
        if f < n:
            chunks, vectors = synthetic(min(CHUNKS_PER_FILE, n - f), f, words, probs)
            file_id = f"file-{k}"
            await pg.put_file(STORE, file_id, f"{file_id}.txt", {"part": k})
            await pg.add_chunks(STORE, file_id, chunks, vectors)
        for d in docs[k * len(docs) // files : (k + 1) * len(docs) // files]:
            cs = chunk_text(corpus[d])
            await pg.put_file(STORE, d, f"{d}.txt", {})
            await pg.add_chunks(STORE, d, cs, unit_vectors(rng, len(cs)))
        if k % 100 == 99:
            print(f"  loaded {f + CHUNKS_PER_FILE} distractors, {time.perf_counter() - start:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    async with engine.connect() as conn:  # merge GIN's pending list, fresh planner statistics
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM (ANALYZE) retrieval_chunks"))
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE bench_meta (distractors int, load_s float8)"))
        await conn.execute(text("INSERT INTO bench_meta VALUES (:n, :l)"), {"n": n, "l": seconds})
    return engine


def brute_force(rows: list[tuple[int, bytes, bytes, int]], hashes: np.ndarray, limit: int) -> list[int]:
    """Okapi BM25 (k1 1.2, b 0.75) of every chunk, from its keyword columns: the reference ranking.
    Each term's chunks are found by comparing it with every stored term of every chunk."""
    n = len(rows)
    lengths = np.array([r[3] for r in rows], dtype=np.float64)
    avgdl = max(lengths.sum() / n, 1.0)
    terms = np.frombuffer(b"".join(r[1] for r in rows), dtype="<u8")
    tfs = np.frombuffer(b"".join(r[2] for r in rows), dtype="<u2")
    doc = np.repeat(np.arange(n), [len(r[1]) // 8 for r in rows])
    scores = np.zeros(n)
    for h in hashes:
        at = np.flatnonzero(terms == h)
        if not at.size:
            continue
        idf = math.log(1 + (n - at.size + 0.5) / (at.size + 0.5))
        d, f = doc[at], tfs[at].astype(np.float64)
        scores[d] += idf * f * 2.2 / (f + 1.2 * (1 - 0.75 + 0.75 * lengths[d] / avgdl))
    ids = np.array([r[0] for r in rows])
    hit = np.flatnonzero(scores > 0)
    order = np.lexsort((ids[hit], -scores[hit]))[:limit]
    return [int(ids[hit][i]) for i in order]


def documents(chunk_ids: list[int], doc_of: dict[int, str]) -> list[str]:
    """Ranked documents: a SciFact document at its best chunk, each distractor chunk on its own."""
    ranked: list[str] = []
    seen: set[str] = set()
    for cid in chunk_ids:
        d = doc_of.get(cid, f"distractor-{cid}")
        if d not in seen:
            seen.add(d)
            ranked.append(d)
    return ranked


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def timed(coro: Awaitable[object]) -> float:
    t0 = time.perf_counter()
    await coro
    return (time.perf_counter() - t0) * 1000


async def measure(
    engine: AsyncEngine,
    queries: dict[str, str],
    doc_of: dict[int, str],
    qrels: dict[str, set[str]],
    distractors: int,
    hybrid: bool,
) -> list[str]:
    index = PostgresChunkIndex(engine)
    qids = list(queries)
    first = await timed(index.keyword_candidates([STORE], query_terms(queries[qids[0]]), LIMIT))
    print(
        f"  first search (loads the store): {first:.0f} ms; RSS {rss_mb():.0f} MB, cache {index.keywords.nbytes / 2**20:.0f} MB",
        flush=True,
    )
    loom: dict[str, list[int]] = {}
    for qid in qids:
        loom[qid] = [c.chunk_id for c in await index.keyword_candidates([STORE], query_terms(queries[qid]), LIMIT)]
    latency = []
    for qid in qids:
        latency.append(await timed(index.keyword_candidates([STORE], query_terms(queries[qid]), LIMIT)))
    async with engine.connect() as conn:
        rows = [
            (int(r[0]), bytes(r[1]), bytes(r[2]), int(r[3]))
            for r in await conn.execute(
                text("SELECT id, kw_terms, kw_tfs, kw_len FROM retrieval_chunks WHERE vector_store_id = :vs"),
                {"vs": STORE},
            )
        ]
    t0 = time.perf_counter()
    exact = {qid: brute_force(rows, analysis.query_hashes(query_terms(queries[qid])), LIMIT) for qid in qids}
    print(f"  brute force: {time.perf_counter() - t0:.0f}s for {len(qids)} queries", flush=True)
    del rows
    n = index.keywords.nbytes
    lines = []
    for name, ranking in (("loom", loom), ("brute force", exact)):
        ndcg = np.mean([ndcg_at_10(documents(ranking[q], doc_of), qrels[q]) for q in qids])
        rec = np.mean([recall_at_100(documents(ranking[q], doc_of), qrels[q]) for q in qids])
        same = np.mean([ranking[q] == exact[q] for q in qids])
        lat = f"{pct(latency, 50):8.2f} {pct(latency, 99):8.2f}" if name == "loom" else f"{'-':>8} {'-':>8}"
        lines.append(
            f"{distractors:>9} {len(doc_of) + distractors:>9} {name:<12} {ndcg:8.4f} {rec:8.4f} {same:6.1%} {lat}"
        )
    print("\n".join([HEADER, *lines]), flush=True)  # the costly part is done: shown before the writes below
    # Writes through another replica, then this one's next search.
    other = PostgresChunkIndex(engine)
    other._hnsw_ready.add(DIMS)  # keyword search only, as at the load: no graph to build now
    words, probs, _ = vocabulary()
    chunks, vectors = synthetic(CHUNKS_PER_FILE, 10**9, words, probs)
    q = query_terms(queries[qids[0]])
    t0 = time.perf_counter()
    await other.put_file(STORE, "bench-extra", "extra.txt", {})
    await other.add_chunks(STORE, "bench-extra", chunks, vectors)
    add_ms = (time.perf_counter() - t0) * 1000
    delta = await timed(index.keyword_candidates([STORE], q, LIMIT))
    t0 = time.perf_counter()
    await other.delete_file(STORE, "bench-extra")
    delete_ms = (time.perf_counter() - t0) * 1000
    reload = await timed(index.keyword_candidates([STORE], q, LIMIT))
    warm = await timed(index.keyword_candidates([STORE], q, LIMIT))
    lines.append(
        f"{distractors:>9}: load {first:.0f} ms; after a 1000-chunk add ({add_ms:.0f} ms) {delta:.0f} ms; after its delete "
        f"({delete_ms:.0f} ms) {reload:.0f} ms; then {warm:.1f} ms. RSS {rss_mb():.0f} MB, cache {n / 2**20:.0f} MB"
    )
    if hybrid:
        lines.append(await hybrid_latency(engine, index, queries))
    return lines


async def hybrid_latency(engine: AsyncEngine, index: PostgresChunkIndex, queries: dict[str, str]) -> str:
    from loom.retrieval.embedding import WordLlamaEmbedder
    from loom.retrieval.schema import hnsw_index_statement
    from loom.retrieval.search import search

    async with engine.begin() as conn:
        found = await conn.execute(
            text("SELECT 1 FROM pg_indexes WHERE indexname = :n"), {"n": f"retrieval_chunks_hnsw_{DIMS}"}
        )
        if found.first() is None:
            t0 = time.perf_counter()
            await conn.execute(text("SET maintenance_work_mem = '1GB'"))
            await conn.execute(text(hnsw_index_statement(DIMS)))
            await conn.execute(text("ANALYZE retrieval_chunks"))
            print(f"  HNSW built in {time.perf_counter() - t0:.0f}s", flush=True)
    embedder = WordLlamaEmbedder()
    out = []
    for mode in ("keyword", "vector", "hybrid"):
        lat = []
        for q in list(queries.values())[:200]:
            lat.append(await timed(search(index, embedder, [STORE], q, mode=mode, max_num_results=10)))
        out.append(f"{mode} p50 {pct(lat, 50):.2f} p99 {pct(lat, 99):.2f} ms")
    return "  search end to end (embed, vector + keyword, fuse, fetch): " + "; ".join(out)


HEADER = f"{'distract.':>9} {'chunks':>9} {'ranking':<12} {'nDCG@10':>8} {'R@100':>8} {'same':>6} {'p50 ms':>8} {'p99 ms':>8}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--distractors", default="1000000", help="comma-separated distractor counts")
    parser.add_argument("--reuse", default="", help="keep each store in a database NAME_<distractors>")
    parser.add_argument("--drop", action="store_true", help="with --reuse: drop those databases at the end")
    parser.add_argument("--queries", type=int, default=0, help="only the first N judged queries (smoke test)")
    parser.add_argument("--hybrid", action="store_true", help="build the HNSW index and time hybrid searches")
    args = parser.parse_args()
    corpus, queries, qrels = load()
    if args.queries:
        queries = dict(list(queries.items())[: args.queries])
    from tests.support.postgres import drop_created_databases, new_database

    print(
        f"SciFact: {len(corpus)} documents + N distractor chunks in one store; {len(queries)} judged queries, "
        f"keyword only, top {LIMIT} chunks"
    )
    table: list[str] = []
    for distractors in [int(s) for s in args.distractors.split(",") if s]:
        name = f"{args.reuse}_{distractors}"
        url, loaded = kept_database(name) if args.reuse else (new_database("scalequal"), False)
        if loaded:
            engine = create_async_engine(url)
            # Not create_schema: it would build the HNSW index this bench leaves out (minutes at 1M).
            t0 = time.perf_counter()
            async with engine.begin() as conn:
                await conn.run_sync(keyword_columns_upgrade)
            print(f"[{distractors}] schema brought up to date in {time.perf_counter() - t0:.0f}s", flush=True)
        else:
            print(f"[{distractors}] loading...", flush=True)
            engine = await load_store(url, distractors, corpus)
        async with engine.connect() as conn:
            _, seconds = (await conn.execute(text("SELECT * FROM bench_meta"))).one()
            rows = await conn.execute(text("SELECT id, file_id FROM retrieval_chunks WHERE file_id NOT LIKE 'file-%'"))
            doc_of: dict[int, str] = {int(r[0]): str(r[1]) for r in rows}
        print(f"[{distractors}] loaded in {seconds:.0f}s{' (kept database)' if loaded else ''}", flush=True)
        lines = await measure(engine, queries, doc_of, qrels, distractors, args.hybrid)
        table.extend(lines)
        print("\n".join([HEADER, *lines]), flush=True)
        await engine.dispose()
        if args.reuse and args.drop:
            drop_kept(name)
    drop_created_databases()
    print("\nsame: share of queries whose top 100 chunks are brute force's, in the same order")
    print("\n".join([HEADER, *table]))


if __name__ == "__main__":
    asyncio.run(main())
