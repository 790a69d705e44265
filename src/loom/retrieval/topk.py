"""Exact BM25 top k over `bm25.Postings` with MaxScore: the same ranking as `bm25.rank`, without
scoring every chunk that holds a common query term.

A query term t adds at most `w_t = idf_t * (k1 + 1)` to a chunk's score. Take the terms by falling
`w_t` (rarest first); a chunk holding none of the first j terms scores at most `rest_j`, the sum of
the others' bounds. Score fully the chunks holding one of the first j terms (each other term's
frequency found by binary search in its postings: a term's docs are ascending); once the k-th best
of those beats `rest_j` (strictly, so that ties by chunk id stay exact), no other chunk can enter
the top k. Else grow j to the shortest prefix whose `rest` falls below that k-th score, and again.
When the chunks to score are a large share of the store's (a query of common words only), the
dense pass of `bm25.rank` is cheaper: it is used instead.

Statistics (N, df, average length) are those of all `stores` together, as in `bm25.rank`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from loom.retrieval.bm25 import BM25_B, BM25_K1, Hashes, Postings, rank
from loom.retrieval.index import Candidate

# Past this share of the stores' chunks to score, the dense pass (`bm25.rank`) is used.
DENSE_SHARE = 0.1

_Ids = npt.NDArray[np.int64]
_Scores = npt.NDArray[np.float64]


def _score(
    store: Postings,
    docs: npt.NDArray[np.int32],
    spans: Sequence[tuple[int, int]],
    weight: Sequence[float],
    avgdl: float,
) -> _Scores:
    """Full BM25 scores of `docs` (sorted, distinct) over every query term."""
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


def maxscore_rank(
    stores: Sequence[Postings],
    hashes: Hashes | Sequence[int],
    limit: int,
    allowed: Collection[str] | None = None,
    *,
    dense_share: float = DENSE_SHARE,
) -> list[Candidate]:
    """`bm25.rank`'s result (see the module's description); past `dense_share` of the chunks to score,
    `bm25.rank` itself. Blocking (numpy)."""
    if any(s.removed_docs for s in stores):  # docs masked out (`Postings.remove`): the dense pass knows them
        return rank(stores, hashes, limit, allowed)
    terms = sorted({int(h) for h in hashes})
    n = sum(s.size for s in stores)
    if not terms or n == 0 or limit <= 0 or (allowed is not None and not allowed):
        return []
    avgdl = max(sum(s.total_length for s in stores) / n, 1.0)
    spans = [[s.span(t) for t in terms] for s in stores]
    df = [sum(sp[j][1] - sp[j][0] for sp in spans) for j in range(len(terms))]
    weight = [math.log(1.0 + (n - d + 0.5) / (d + 0.5)) * (BM25_K1 + 1) if d else 0.0 for d in df]
    order = sorted((j for j in range(len(terms)) if df[j]), key=lambda j: (-weight[j], j))
    if not order:
        return []
    rest = [sum(weight[j] for j in order[i:]) for i in range(len(order) + 1)]
    wanted = [None if allowed is None else np.array([f in allowed for f in s.file_ids], dtype=bool) for s in stores]
    size = 1
    while True:
        chosen = order[:size]
        if sum(df[j] for j in chosen) > dense_share * n:
            return rank(stores, hashes, limit, allowed)
        ids: list[_Ids] = []
        scores: list[_Scores] = []
        for store, store_spans, keep in zip(stores, spans, wanted, strict=True):
            parts = [store.docs[store_spans[j][0] : store_spans[j][1]] for j in chosen]
            docs = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)
            if keep is not None and docs.size:
                docs = docs[keep[store.file_codes[docs]]] if keep.size else docs[:0]
            if not docs.size:
                continue
            scores.append(_score(store, docs, store_spans, weight, avgdl))
            ids.append(store.chunk_ids[docs])
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        kth = float(-np.partition(-all_scores, limit - 1)[limit - 1]) if all_scores.shape[0] >= limit else 0.0
        if size == len(order) or rest[size] < kth:
            break
        # The shortest prefix whose left-out terms cannot reach the k-th score (at least one more term).
        size = next((i for i in range(size + 1, len(order) + 1) if rest[i] < kth), len(order))
    if all_scores.shape[0] > limit:
        keep_top = all_scores >= kth
        all_scores, all_ids = all_scores[keep_top], all_ids[keep_top]
    top = np.lexsort((all_ids, -all_scores))[:limit]
    return [Candidate(int(all_ids[i]), float(all_scores[i])) for i in top]
