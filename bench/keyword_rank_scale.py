"""Exact BM25 top k in memory at scale: `topk.maxscore_rank` against `bm25.rank` (the dense pass).

    nice -n 10 .venv/bin/python bench/keyword_rank_scale.py [--chunks 1000000] [--limit 100]

The postings of N synthetic chunks (bench/retrieval_latency.py's generator: 150 words drawn from
SciFact's word frequencies, each word's term hash as `bm25` computes it) are built straight into a
`bm25.Postings` of segments of `pg_keywords.SEGMENT_ROWS` (no database: what a replica holds once a
store is loaded), then SciFact's test queries are ranked twice each (second pass timed). Prints the
build time, the index's size and the process's peak RSS, and p50/p90/p99 per method.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.retrieval_latency import WORDS_PER_CHUNK, pct, vocabulary  # noqa: E402
from loom.retrieval import bm25  # noqa: E402
from loom.retrieval.index import query_terms  # noqa: E402
from loom.retrieval.pg_keywords import SEGMENT_ROWS  # noqa: E402
from loom.retrieval.topk import maxscore_rank  # noqa: E402


def segment(start: int, n: int, hashes: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> bm25.Postings:
    ids = np.sort(hashes[rng.choice(len(hashes), size=(n, WORDS_PER_CHUNK), p=probs)], axis=1)
    rows: list[bm25.PostingsRow] = []
    for r in range(n):
        terms, tfs = np.unique(ids[r], return_counts=True)
        rows.append((start + r, 0, terms.astype("<u8").tobytes(), tfs.astype("<u2").tobytes(), WORDS_PER_CHUNK))
    return bm25.Postings.build(rows, ["f"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    words, probs, queries = vocabulary()
    hashes = np.array([int(h[0]) if (h := bm25.query_hashes([w])).size else 0 for w in words], dtype=np.uint64)
    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    segments = [
        segment(s, min(SEGMENT_ROWS, args.chunks - s), hashes, probs, rng) for s in range(0, args.chunks, SEGMENT_ROWS)
    ]
    size = sum(s.nbytes for s in segments) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.chunks} chunks: generated and built in {time.perf_counter() - t0:.0f}s, {len(segments)} segments, "
        f"{size:.0f} MB of postings, peak RSS {peak:.0f} MB"
    )
    qs = [bm25.query_hashes(query_terms(q)) for q in queries[:300]]
    for name, method in (("maxscore_rank", maxscore_rank), ("bm25.rank (dense)", bm25.rank)):
        lat: list[float] = []
        for timed in (False, True):
            for q in qs:
                t = time.perf_counter()
                method(segments, q, args.limit)
                if timed:
                    lat.append((time.perf_counter() - t) * 1000)
        print(
            f"{name:<18} top {args.limit}: p50 {pct(lat, 50):7.2f} ms  p90 {pct(lat, 90):7.2f} ms  p99 {pct(lat, 99):7.2f} ms"
        )
    same = sum(maxscore_rank(segments, q, args.limit) == bm25.rank(segments, q, args.limit) for q in qs)
    print(f"identical top {args.limit}: {same}/{len(qs)} queries")


if __name__ == "__main__":
    main()
