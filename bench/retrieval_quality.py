"""Retrieval quality on SciFact (BEIR test split): nDCG@10 and recall@100 per search mode.

    .venv/bin/python bench/retrieval_quality.py [--postgres] [--embedder wordllama|minilm|minilm-numpy] [--rerank-sweep]

Reads the corpus from ../shared/data/ir/scifact (CC BY-NC: never copied into this repository),
indexes every abstract (title + text) as one file of one vector store with the `auto` chunking,
and scores keyword-only, vector-only and hybrid search (several fusion settings) on the 300 test
queries. A document's score is its best chunk's. Published BM25 on this split is 0.665-0.684.
Every mode runs with `ranker: none`, and hybrid also with the reranker (`auto`: late interaction over
MiniLM's stored token vectors, `loom.retrieval.rerank`; stores of other embedders are not reranked), side
by side; then the reranker's added time per search at 50 candidates (p50/p99: reading the candidates'
token vectors and scoring them) and whole searches with and without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from loom.retrieval import rerank  # noqa: E402
from loom.retrieval.chunking import chunk_text  # noqa: E402
from loom.retrieval.embedding import Embedder, WordLlamaEmbedder  # noqa: E402
from loom.retrieval.index import ChunkIndex  # noqa: E402
from loom.retrieval.rerank import RERANK_DEPTH, embed_queries, embed_with_tokens, keeps_tokens, rescore  # noqa: E402
from loom.retrieval.search import Fusion, SearchMode, fusion_for, run_search  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ir" / "scifact"
STORE = "vs_scifact"


def load() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    corpus: dict[str, str] = {}
    with open(DATA / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = (d.get("title", "") + "\n" + d.get("text", "")).strip()
    qrels: dict[str, set[str]] = defaultdict(set)
    with open(DATA / "qrels.tsv") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels[qid].add(did)
    queries: dict[str, str] = {}
    with open(DATA / "queries.jsonl") as f:
        for line in f:
            d = json.loads(line)
            if d["_id"] in qrels:
                queries[d["_id"]] = d["text"]
    return corpus, queries, qrels


def ndcg_at_10(ranked: list[str], relevant: set[str]) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    return dcg / ideal if ideal else 0.0


def recall_at_100(ranked: list[str], relevant: set[str]) -> float:
    return len(set(ranked[:100]) & relevant) / len(relevant)


async def build(index: ChunkIndex, embedder: Embedder, corpus: dict[str, str]) -> tuple[int, float]:
    await index.create_schema()
    start = time.perf_counter()
    ids = list(corpus)
    n_chunks = 0
    batch = 512
    for i in range(0, len(ids), batch):
        part = ids[i : i + batch]
        chunked = [chunk_text(corpus[d]) for d in part]
        flat = [c.text for cs in chunked for c in cs]
        vectors, late = await embed_with_tokens(embedder, flat)  # as ingestion does
        pos = 0
        for d, cs in zip(part, chunked, strict=True):
            await index.put_file(STORE, d, f"{d}.txt", {})
            await index.add_chunks(STORE, d, cs, vectors[pos : pos + len(cs)], late[pos : pos + len(cs)])
            pos += len(cs)
            n_chunks += len(cs)
    return n_chunks, time.perf_counter() - start


async def evaluate(
    index: ChunkIndex,
    embedder: Embedder,
    queries: dict[str, str],
    qrels: dict[str, set[str]],
    mode: SearchMode,
    fusion: Fusion,
    ranker: str = "none",
) -> tuple[float, float]:
    ndcgs, recalls = [], []
    for qid, q in queries.items():
        results = await run_search(
            index, embedder, [STORE], q, max_num_results=100, mode=mode, fusion=fusion, ranker=ranker
        )
        ranked: list[str] = []
        for r in results:
            if r.file_id not in ranked:
                ranked.append(r.file_id)
        ndcgs.append(ndcg_at_10(ranked, qrels[qid]))
        recalls.append(recall_at_100(ranked, qrels[qid]))
    return float(np.mean(ndcgs)), float(np.mean(recalls))


def make_embedder(name: str) -> Embedder:
    if name == "wordllama":
        return WordLlamaEmbedder()
    if name == "minilm":
        # The server's `minilm`: all-MiniLM-L6-v2, int8 on ONNX Runtime (weights from `make weights`).
        from loom.retrieval.minilm import MiniLMEmbedder as OnnxMiniLM

        return OnnxMiniLM()
    if name == "minilm-numpy":
        # The float32 reference in numpy, weights hash-checked, corpus vectors cached on disk.
        from bench.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    raise SystemExit(f"unknown embedder {name}")


async def rerank_latency(index: ChunkIndex, embedder: Embedder, queries: dict[str, str]) -> None:
    """The reranker's own time per search at RERANK_DEPTH candidates (token vectors read and scored),
    and whole searches (10 results) with and without it."""
    added: list[float] = []
    whole: dict[str, list[float]] = {"none": [], "auto": []}
    for q in queries.values():
        fused = await run_search(index, embedder, [STORE], q, max_num_results=RERANK_DEPTH, ranker="none")
        _, pieces = await embed_queries(embedder, [q])
        assert pieces is not None
        t0 = time.perf_counter()
        blobs = await index.late_tokens([r.chunk_id for r in fused])
        await asyncio.to_thread(rescore, pieces, [r.score for r in fused], [blobs[r.chunk_id] for r in fused])
        added.append((time.perf_counter() - t0) * 1000)
        for ranker, times in whole.items():
            t0 = time.perf_counter()
            await run_search(index, embedder, [STORE], q, max_num_results=10, ranker=ranker)
            times.append((time.perf_counter() - t0) * 1000)
    p50, p99 = np.percentile(added, [50, 99])
    print(f"rerank added per search ({RERANK_DEPTH} candidates): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    for ranker, times in whole.items():
        p50, p99 = np.percentile(times, [50, 99])
        print(f"whole search, ranker {ranker}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", action="store_true", help="also measure the PostgreSQL index")
    parser.add_argument("--embedder", default="wordllama")
    parser.add_argument("--grid", action="store_true", help="also try reciprocal-rank fusion")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--rerank-sweep", action="store_true", help="also the reranker's mix: fused weight 0.1..0.7 (shipped 0.3)"
    )
    args = parser.parse_args()
    corpus, queries, qrels = load()
    embedder = make_embedder(args.embedder)
    shipped = fusion_for(embedder.name)
    hybrid = f"hybrid default ({shipped.method}, w={shipped.vector_weight})"
    configs: list[tuple[str, SearchMode, Fusion, str]] = [
        ("keyword (BM25)", "keyword", shipped, "none"),
        ("vector", "vector", shipped, "none"),
        (hybrid, "hybrid", shipped, "none"),
        (f"{hybrid} + rerank", "hybrid", shipped, "auto"),
    ]
    # The whole sweep of linear fusion's vector weight (what `fusion_for` was picked from).
    for w in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        configs.append((f"hybrid linear w={w}", "hybrid", Fusion("linear", w), "none"))
    if args.grid:
        for w in (0.3, 0.4, 0.5):
            configs.append((f"hybrid rrf w={w}", "hybrid", Fusion("rrf", w), "none"))

    backends: list[tuple[str, Any]] = []
    tmp = tempfile.TemporaryDirectory()
    sqlite_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp.name}/bench.db")
    from loom.retrieval.sqlite_index import SQLiteChunkIndex

    if not args.skip_sqlite:
        backends.append(("sqlite", SQLiteChunkIndex(sqlite_engine)))
    pg_engine = None
    if args.postgres:
        from tests.support.postgres import new_database

        from loom.retrieval.pg_index import PostgresChunkIndex

        pg_engine = create_async_engine(new_database("bench"))
        backends.append(("postgres", PostgresChunkIndex(pg_engine, dimensions=embedder.dimensions or 256)))

    print(f"SciFact: {len(corpus)} documents, {len(queries)} judged queries, embedder {embedder.name}")
    print("published reference (same split): BM25 0.665-0.684, all-MiniLM-L6-v2 0.645-0.674")
    for name, index in backends:
        n_chunks, seconds = await build(index, embedder, corpus)
        print(f"\n[{name}] indexed {n_chunks} chunks in {seconds:.1f}s")
        print(f"{'mode':<40} {'nDCG@10':>8} {'R@100':>8} {'s':>6}")
        for label, mode, fusion, ranker in configs:
            t0 = time.perf_counter()
            ndcg, rec = await evaluate(index, embedder, queries, qrels, mode, fusion, ranker)
            print(f"{label:<40} {ndcg:8.4f} {rec:8.4f} {time.perf_counter() - t0:6.1f}", flush=True)
        if args.rerank_sweep and keeps_tokens(embedder):
            shipped_mix = rerank.FUSED_WEIGHT
            try:
                for mix in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
                    rerank.FUSED_WEIGHT = mix  # read by rerank.combine at each call
                    ndcg, rec = await evaluate(index, embedder, queries, qrels, "hybrid", shipped, "auto")
                    print(f"{f'{hybrid} + rerank, fused x {mix}':<40} {ndcg:8.4f} {rec:8.4f}", flush=True)
            finally:
                rerank.FUSED_WEIGHT = shipped_mix
        if keeps_tokens(embedder):
            await rerank_latency(index, embedder, queries)
    await sqlite_engine.dispose()
    if pg_engine is not None:
        await pg_engine.dispose()
    tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
