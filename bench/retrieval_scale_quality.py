"""What the approximate keyword ranking of large PostgreSQL stores costs in quality.

    nice -n 10 .venv/bin/python bench/retrieval_scale_quality.py [--distractors 1000000,100000] [--reuse NAME]
        [--drop] [--exhaustive] [--single-pass] [--queries N]

One vector store holds SciFact's abstracts (chunked as bench/retrieval_quality.py does) and N synthetic
distractor chunks (bench/retrieval_latency.py's generator: 150 words drawn from SciFact's word
frequencies). SciFact's documents are spread evenly among the distractor files (a few after each
file of 1000), so neither the relevant chunks nor the distractors come first in the table: the
capped sample of the approximate path takes the chunks it finds first. Vectors are random unit
vectors (keyword search only) and the HNSW index is not built.

For SciFact's 300 judged test queries, keyword only, two `PostgresChunkIndex` on the same database:
"exact" (`large_store` above the store's size: MaxScore, itself capped at MAX_SCORED chunks) and the
shipped defaults (approximate when even the rarest terms are in more than `first_pass_rows` chunks).
`--exhaustive` adds a third, "MaxScore without the MAX_SCORED cap" (exact BM25 top 100; timed on
the first pass only, after the other two's). Reported:
nDCG@10 and recall@100 over SciFact's qrels (a distractor is never relevant; each distractor chunk
counts as a document of its own), the share of queries that took the approximate path, the mean
overlap@10/@100 of the top chunks with the exact ranking, and p50/p99 of `keyword_candidates`
(timed on a second pass over the queries, each instance in turn, after a first pass that also
produced the rankings; `--single-pass`: timed on that first pass, run defaults, exact, exhaustive).

`--reuse NAME` keeps each size's database as `NAME_<N>` for later runs (same convention as
bench/retrieval_latency.py), `--drop` drops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from bench.retrieval_latency import CHUNKS_PER_FILE, DIMS, drop_kept, kept_database, pct, synthetic, vocabulary  # noqa: E402
from bench.retrieval_quality import load, ndcg_at_10, recall_at_100  # noqa: E402
from loom.retrieval import pg_keywords  # noqa: E402
from loom.retrieval.chunking import chunk_text  # noqa: E402
from loom.retrieval.index import Candidate, query_terms  # noqa: E402
from loom.retrieval.pg_index import PostgresChunkIndex  # noqa: E402
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


@dataclass
class Run:
    name: str
    index: PostgresChunkIndex
    rankings: dict[str, list[int]] = field(default_factory=dict)
    latency: list[float] = field(default_factory=list)
    approximate: dict[str, str] = field(default_factory=dict)  # qid -> "groups" | "sample"


# The approximate path starts with `_co_occurring` (module-level, looked up at call time): count it.
_co_occurring = pg_keywords._co_occurring
_last_path: list[str] = []


def _counting_co_occurring(
    order: Sequence[str], df: dict[str, int], n: int, bound: dict[str, float], limit: int, budget: int
) -> list[tuple[str, ...]]:
    groups = _co_occurring(order, df, n, bound, limit, budget)
    _last_path.append("groups" if groups else "sample")
    return groups


pg_keywords._co_occurring = _counting_co_occurring


async def keyword(run: Run, query: str) -> tuple[list[Candidate], float, str | None]:
    _last_path.clear()
    t0 = time.perf_counter()
    found = await run.index.keyword_candidates([STORE], query_terms(query), LIMIT)
    ms = (time.perf_counter() - t0) * 1000
    return found, ms, (_last_path[0] if _last_path else None)


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


def overlap(a: list[int], b: list[int], k: int) -> float:
    top = a[:k]
    return len(set(top) & set(b[:k])) / len(top) if top else 1.0


async def measure(
    engine: AsyncEngine, queries: dict[str, str], exhaustive: bool, single_pass: bool
) -> tuple[int, list[Run]]:
    async with engine.connect() as conn:
        n = int((await conn.execute(text("SELECT count(*) FROM retrieval_chunks"))).scalar_one())
    runs = [
        Run("exact", PostgresChunkIndex(engine, large_store=n + 1)),
        Run("defaults", PostgresChunkIndex(engine)),
    ]
    if exhaustive:  # slow at a million chunks: one pass, last (the caches warmed by the others)
        runs.append(Run("exhaustive", PostgresChunkIndex(engine, large_store=n + 1)))
    if single_pass:  # rank and time in one pass, the shipped defaults first (coldest caches)
        runs.reverse()
    for timed in (None,) if single_pass else (False, True):  # pass one ranks (and warms), two times
        for run in runs:
            if timed and run.name == "exhaustive":
                continue
            capped = pg_keywords.MAX_SCORED
            if run.name == "exhaustive":
                pg_keywords.MAX_SCORED = n + 1
            try:
                for qid, q in queries.items():
                    found, ms, path = await keyword(run, q)
                    if timed is not False or run.name == "exhaustive":
                        run.latency.append(ms)
                    if timed is not True:
                        run.rankings[qid] = [c.chunk_id for c in found]
                        if path is not None:
                            run.approximate[qid] = path
            finally:
                pg_keywords.MAX_SCORED = capped
    return n, runs


def report(n: int, distractors: int, runs: list[Run], qrels: dict[str, set[str]], doc_of: dict[int, str]) -> list[str]:
    ref = next(r for r in runs if r.name == "exact")
    full = next((r for r in runs if r.name == "exhaustive"), None)
    lines = []
    for run in runs:
        qids = list(run.rankings)
        ndcg = np.mean([ndcg_at_10(documents(run.rankings[q], doc_of), qrels[q]) for q in qids])
        rec = np.mean([recall_at_100(documents(run.rankings[q], doc_of), qrels[q]) for q in qids])
        o10 = np.mean([overlap(ref.rankings[q], run.rankings[q], 10) for q in qids])
        o100 = np.mean([overlap(ref.rankings[q], run.rankings[q], 100) for q in qids])
        if full is not None:  # against exact BM25; "same": share of queries with the very same top 100
            e10 = np.mean([overlap(full.rankings[q], run.rankings[q], 10) for q in qids])
            e100 = np.mean([overlap(full.rankings[q], run.rankings[q], 100) for q in qids])
            same = np.mean([full.rankings[q] == run.rankings[q] for q in qids])
            vs_full = f"{e10:7.3f} {e100:7.3f} {same:6.1%}"
        else:
            vs_full = f"{'-':>7} {'-':>7} {'-':>6}"
        groups = sum(1 for p in run.approximate.values() if p == "groups")
        sample = sum(1 for p in run.approximate.values() if p == "sample")
        approx = f"{(groups + sample) / len(qids):5.1%} ({groups}g/{sample}s)"
        lines.append(
            f"{distractors:>9} {n:>9} {run.name:<10} {ndcg:8.4f} {rec:8.4f} {approx:>17} "
            f"{o10:7.3f} {o100:7.3f} {vs_full} {pct(run.latency, 50):9.2f} {pct(run.latency, 99):9.2f}"
        )
    return lines


HEADER = (
    f"{'distract.':>9} {'chunks':>9} {'index':<10} {'nDCG@10':>8} {'R@100':>8} {'approx. path':>17} "
    f"{'ov@10':>7} {'ov@100':>7} {'ex@10':>7} {'ex@100':>7} {'same':>6} {'p50 ms':>9} {'p99 ms':>9}"
)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--distractors", default="1000000", help="comma-separated distractor counts")
    parser.add_argument("--reuse", default="", help="keep each store in a database NAME_<distractors>")
    parser.add_argument("--drop", action="store_true", help="with --reuse: drop those databases at the end")
    parser.add_argument("--exhaustive", action="store_true", help="also MaxScore without the MAX_SCORED cap")
    parser.add_argument("--single-pass", action="store_true", help="rank and time in one pass (1M: saves ~8 min)")
    parser.add_argument("--queries", type=int, default=0, help="only the first N judged queries (smoke test)")
    args = parser.parse_args()
    corpus, queries, qrels = load()
    if args.queries:
        queries = dict(list(queries.items())[: args.queries])
    from tests.support.postgres import drop_created_databases, new_database

    print(
        f"SciFact: {len(corpus)} documents + N distractor chunks in one store; {len(queries)} judged queries, "
        f"keyword only, top {LIMIT} chunks; defaults first_pass_rows={pg_keywords.FIRST_PASS_ROWS} "
        f"large_store={pg_keywords.LARGE_STORE}, MAX_SCORED={pg_keywords.MAX_SCORED}"
    )
    table: list[str] = []
    for distractors in [int(s) for s in args.distractors.split(",") if s]:
        name = f"{args.reuse}_{distractors}"
        url, loaded = kept_database(name) if args.reuse else (new_database("scalequal"), False)
        if loaded:
            engine = create_async_engine(url)
            # No create_schema here: it would build the HNSW index this bench leaves out (minutes at 1M).
        else:
            print(f"[{distractors}] loading...", flush=True)
            engine = await load_store(url, distractors, corpus)
        async with engine.connect() as conn:
            _, seconds = (await conn.execute(text("SELECT * FROM bench_meta"))).one()
            rows = await conn.execute(text("SELECT id, file_id FROM retrieval_chunks WHERE file_id NOT LIKE 'file-%'"))
            doc_of: dict[int, str] = {int(r[0]): str(r[1]) for r in rows}
        print(f"[{distractors}] loaded in {seconds:.0f}s{' (kept database)' if loaded else ''}", flush=True)
        n, runs = await measure(engine, queries, args.exhaustive, args.single_pass)
        lines = report(n, distractors, runs, qrels, doc_of)
        table.extend(lines)
        print("\n".join([HEADER, *lines]), flush=True)
        await engine.dispose()
        if args.reuse and args.drop:
            drop_kept(name)
    drop_created_databases()
    print("\napprox. path: share of queries (g: co-occurring term groups, s: capped sample of the rarest term)")
    print("ov@k: share of the exact ranking's top k chunks also in this one's top k")
    print("ex@k, same: the same against exact BM25 (--exhaustive), and the share of identical top 100s")
    print("\n".join([HEADER, *table]))


if __name__ == "__main__":
    asyncio.run(main())
