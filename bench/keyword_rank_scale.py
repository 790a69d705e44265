"""Exact BM25 top k in memory at scale: `topk.top_k` against the dense pass (`bm25.rank`) and the
MaxScore that shipped before it (below, as it was), in one run.

    nice -n 10 .venv/bin/python bench/keyword_rank_scale.py [--chunks 1000000] [--limit 100]

The postings of N synthetic chunks (bench/retrieval_latency.py's generator: 150 words drawn from
SciFact's word frequencies, each word's term hash as `bm25` computes it) are built straight into a
`bm25.Postings` of segments of `pg_keywords.SEGMENT_ROWS` (no database: what a replica holds once a
store is loaded), then SciFact's test queries are ranked twice by each method, interleaved (second pass timed).
Prints the build time (and the part of it the per-term and per-block bounds take), the index's size (and the
bounds' share), the process's peak RSS, p50/p90/p99 per method, how many queries each ranks exactly
as the dense pass does (ids and scores), and the share of the query terms' postings `top_k` scored
densely and looked up.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.retrieval_latency import WORDS_PER_CHUNK, pct, vocabulary  # noqa: E402
from loom.retrieval import analysis, bm25  # noqa: E402
from loom.retrieval.analysis import Hashes  # noqa: E402
from loom.retrieval.bm25 import BM25_B, BM25_K1, Postings  # noqa: E402
from loom.retrieval.index import Candidate, query_terms  # noqa: E402
from loom.retrieval.pg_keywords import SEGMENT_ROWS  # noqa: E402
from loom.retrieval.topk import Work, top_k  # noqa: E402

Rank = Callable[[Sequence[Postings], Hashes, int], list[Candidate]]


def _old_score(
    store: Postings,
    docs: npt.NDArray[np.int32],
    spans: Sequence[tuple[int, int]],
    weight: Sequence[float],
    avgdl: float,
) -> npt.NDArray[np.float64]:
    norm = BM25_K1 * (1 - BM25_B + BM25_B * store.lengths[docs] / avgdl)
    scores = np.zeros(docs.shape[0], dtype=np.float64)
    for (lo, hi), w in zip(spans, weight, strict=True):
        if hi == lo:
            continue
        posted = store.docs[lo:hi]
        at = np.searchsorted(posted, docs)
        hit = at < posted.shape[0]
        hit[hit] = posted[at[hit]] == docs[hit]
        if not hit.any():
            continue
        tf = store.tfs[lo:hi][at[hit]].astype(np.float64)
        scores[hit] += w * tf / (tf + norm[hit])
    return scores


def old_maxscore(stores: Sequence[Postings], hashes: Hashes, limit: int) -> list[Candidate]:
    """`topk.maxscore_rank` as it shipped before `top_k` (commit 04d6677; no file filter, no removed
    docs): bounds idf * (k1 + 1), the rarest terms' docs scored by binary search, the dense pass past
    10 % of the chunks."""
    terms = sorted({int(h) for h in hashes})
    n = sum(s.size for s in stores)
    if not terms or n == 0 or limit <= 0:
        return []
    avgdl = max(sum(s.total_length for s in stores) / n, 1.0)
    spans = [[s.span(t) for t in terms] for s in stores]
    df = [sum(sp[j][1] - sp[j][0] for sp in spans) for j in range(len(terms))]
    weight = [math.log(1.0 + (n - d + 0.5) / (d + 0.5)) * (BM25_K1 + 1) if d else 0.0 for d in df]
    order = sorted((j for j in range(len(terms)) if df[j]), key=lambda j: (-weight[j], j))
    if not order:
        return []
    rest = [sum(weight[j] for j in order[i:]) for i in range(len(order) + 1)]
    size = 1
    while True:
        chosen = order[:size]
        if sum(df[j] for j in chosen) > 0.1 * n:
            return bm25.rank(stores, hashes, limit)
        ids, scores = [], []
        for store, store_spans in zip(stores, spans, strict=True):
            parts = [store.docs[store_spans[j][0] : store_spans[j][1]] for j in chosen]
            docs = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)
            if docs.size:
                scores.append(_old_score(store, docs, store_spans, weight, avgdl))
                ids.append(store.chunk_ids[docs])
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        kth = float(-np.partition(-all_scores, limit - 1)[limit - 1]) if all_scores.shape[0] >= limit else 0.0
        if size == len(order) or rest[size] < kth:
            break
        size = next((i for i in range(size + 1, len(order) + 1) if rest[i] < kth), len(order))
    if all_scores.shape[0] > limit:
        keep_top = all_scores >= kth
        all_scores, all_ids = all_scores[keep_top], all_ids[keep_top]
    top = np.lexsort((all_ids, -all_scores))[:limit]
    return [Candidate(int(all_ids[i]), float(all_scores[i])) for i in top]


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
    hashes = np.array([int(h[0]) if (h := analysis.query_hashes([w])).size else 0 for w in words], dtype=np.uint64)
    rng = np.random.default_rng(7)
    t0 = time.perf_counter()
    segments = [
        segment(s, min(SEGMENT_ROWS, args.chunks - s), hashes, probs, rng) for s in range(0, args.chunks, SEGMENT_ROWS)
    ]
    built = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    for s in segments:  # what the bounds and doc bitmaps add to a build, timed again on their own
        bm25._term_bounds(s.offsets, s.docs, s.tfs, s.lengths)
        bm25._block_bounds(s.offsets, s.docs, s.tfs, s.lengths)
        bm25._doc_bits(s.offsets, s.docs, s.size)
    bounds_s = time.perf_counter() - t0
    size = sum(s.nbytes for s in segments) / 2**20
    bounds_mb = (
        sum(s.max_tfs.nbytes + s.min_lengths.nbytes + s.block_rows.nbytes + s.block_max_tfs.nbytes for s in segments)
        + sum(s.block_min_lengths.nbytes + s.bit_rows.nbytes + s.bits.nbytes + s.bit_ranks.nbytes for s in segments)
    ) / 2**20
    print(
        f"{args.chunks} chunks: generated and built in {built:.0f}s (bounds and bitmaps {bounds_s:.1f}s of it), "
        f"{len(segments)} segments, {size:.0f} MB of postings (bounds and bitmaps {bounds_mb:.1f} MB), peak RSS {peak:.0f} MB"
    )
    qs = [analysis.query_hashes(query_terms(q)) for q in queries[:300]]
    exhaustive = [bm25.rank(segments, q, args.limit) for q in qs]
    methods: list[tuple[str, Rank]] = [
        ("dense pass (bm25.rank)", bm25.rank),
        ("old MaxScore", old_maxscore),
        ("top_k", top_k),
    ]
    # Interleaved (each query by every method in turn, the order rotating from query to query, twice,
    # the second timed), so that a shared machine's changing load and the caches fall on all alike.
    lat: dict[str, list[float]] = {name: [] for name, _ in methods}
    same = dict.fromkeys(lat, 0)
    for timed in (False, True):
        for i, (q, want) in enumerate(zip(qs, exhaustive, strict=True)):
            for name, method in methods[i % 3 :] + methods[: i % 3]:
                t = time.perf_counter()
                got = method(segments, q, args.limit)
                if timed:
                    lat[name].append((time.perf_counter() - t) * 1000)
                    same[name] += got == want
    for name, _ in methods:
        ms = lat[name]
        print(
            f"{name:<23} top {args.limit}: p50 {pct(ms, 50):7.2f} ms  p90 {pct(ms, 90):7.2f} ms  "
            f"p99 {pct(ms, 99):7.2f} ms  identical to exhaustive {same[name]}/{len(qs)}"
        )
    work = Work()
    for q in qs:
        top_k(segments, q, args.limit, work=work)
    print(
        f"top_k: of the query terms' postings, {work.scanned / work.postings:.1%} scored densely, "
        f"{work.looked_up / work.postings:.1%} looked up for candidates"
    )


if __name__ == "__main__":
    main()
