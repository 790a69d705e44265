"""Exact BM25 top k over `bm25.Postings`: `bm25.rank`'s result (ids, scores, tie order), pruned with
per-term upper bounds that hold whatever the searched stores' statistics are (MaxScore, vectorised).

Bounds. Each segment keeps, per term, the largest tf and the shortest doc length of its postings
(`Postings.max_tfs`, `min_lengths`), and the same per block of 64 docs for its common terms
(`block_max_tfs`, `block_min_lengths`): no N, df or average length in them, so they stay true for
any set of stores searched together and after deletes (removed docs only loosen them; a merge or a
compaction recomputes them). BM25 grows with tf and shrinks with length, so under the statistics of
this search a term t adds at most `u_t = w_t * tf_max / (tf_max + K(len_min))` to a doc's score
(w_t = idf_t * (k1 + 1), K(len) = k1 * (1 - b + b * len / avgdl)): over the store, the largest over
the segments holding it; in a block, from that block's figures.

Search. (1) A threshold: the exact scores of a few docs (those of the terms with the highest
bounds, one in SEED_SHARE of the docs within SEED_DOCS); if at least k, `theta` is the k-th best of
them, a lower bound of the k-th best overall (else 0: no pruning). (2) The terms by rising bound
whose bounds sum below `theta` are optional: a doc holding none of the others (the essential
terms) scores less than `theta` and cannot enter the top k. (3) The essential terms' postings are
scored densely (one `bincount` per segment, in cache); the docs whose partial score plus the optional
terms' bounds reaches `theta` are the candidates. (4) The optional terms are looked up for the
candidates, highest bound first; before and after each, a candidate goes once its partial score
plus the block bounds of the optional terms still to look up falls below `theta`. (5) The
survivors' k best are scored again in `bm25.rank`'s term order, so scores are bit-identical to the
dense pass and ties fall by chunk id exactly.

Why not block-max over all terms (skip a block whose summed bounds are below `theta`): on SciFact-like
queries of 6-16 words over 1M chunks, 85 % of 64-doc blocks stay above the exact k-th score (97 % of
256-doc blocks), so it prunes little; bounding what the optional terms can add to each candidate
cuts the look-ups about threefold (bench/keyword_rank_scale.py prints the shares of postings scanned
and looked up).

Every comparison against a bound carries a relative slack (SLACK, far above float64 rounding), and a
doc is dropped only when it is strictly below `theta`, so a doc tying the k-th score is never lost.
With `theta` 0 (fewer than k matches, or a file filter that leaves fewer seeds) every term is
essential and (3) is the exhaustive dense pass.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from loom.retrieval.analysis import Hashes
from loom.retrieval.bm25 import BLOCK_SHIFT, BM25_B, BM25_K1, Postings
from loom.retrieval.index import Candidate

# About how many docs are scored exactly to find the first threshold: one in SEED_SHARE of the
# stores' docs, within SEED_DOCS (and at least 4 k). More seeds, a closer threshold, less scanned.
SEED_DOCS = (1024, 8192)
SEED_SHARE = 256
# Relative slack on every bound comparison: float64 rounding is ~1e-16 per operation.
SLACK = 1e-9
# A term's tfs are looked up through its doc bitmap if it has one (`Postings.bits`: the common terms),
# else by binary search for up to 1/LOOKUP_SHARE of its postings' count of docs, else through a dense
# table of the segment (one scatter and one gather).
LOOKUP_SHARE = 8

_ONE = np.uint64(1)
assert BLOCK_SHIFT == 6  # the doc bitmaps' blocks are 64-bit words

_Docs = npt.NDArray[np.int64]
_Floats = npt.NDArray[np.float64]


@dataclass(slots=True)
class Work:
    """What a search did (for tests and benchmarks): `postings` of the query terms in the searched
    segments, how many of them were scored densely (`scanned`), how many tf look-ups were made for
    candidates, and the threshold found (`theta`)."""

    postings: int = 0
    scanned: int = 0
    looked_up: int = 0
    theta: float = 0.0


class _Segment:
    """One segment's view of the query: where each term's postings are, and their live df."""

    def __init__(self, store: Postings, terms: Hashes, allowed: Collection[str] | None) -> None:
        self.store = store
        at = np.searchsorted(store.terms, terms)
        found = at < store.terms.shape[0]
        found[found] = store.terms[at[found]] == terms[found]
        self.index = np.where(found, at, 0)
        self.found = found
        self.lo = np.where(found, store.offsets[self.index], 0)
        self.hi = np.where(found, store.offsets[self.index + 1], 0)
        if store.removed is None:
            self.df = self.hi - self.lo
        else:
            removed = store.removed
            self.df = np.array(
                [int(np.count_nonzero(~removed[store.docs[lo:hi]])) for lo, hi in zip(self.lo, self.hi, strict=True)],
                dtype=np.int64,
            )
        self.wanted: npt.NDArray[np.bool_] | None = None
        if allowed is not None:
            self.wanted = np.array([f in allowed for f in store.file_ids], dtype=bool)
        self._table: npt.NDArray[np.uint16] | None = None

    def postings(self, j: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint16]]:
        lo, hi = int(self.lo[j]), int(self.hi[j])
        return self.store.docs[lo:hi], self.store.tfs[lo:hi]

    def usable(self, docs: _Docs) -> _Docs:
        """`docs` (sorted) less the removed ones and those outside the allowed files."""
        if self.store.removed is not None and docs.size:
            docs = docs[~self.store.removed[docs]]
        if self.wanted is not None and docs.size:
            docs = docs[self.wanted[self.store.file_codes[docs]]] if self.wanted.size else docs[:0]
        return docs

    def tfs(self, j: int, docs: _Docs) -> _Floats:
        """Term j's frequency in each of `docs` (sorted, distinct; 0 where absent), as floats."""
        posted, tfs = self.postings(j)
        n = posted.shape[0]
        if not n:
            return np.zeros(docs.shape[0], dtype=np.float64)
        row = int(self.store.bit_rows[self.index[j]])
        if row >= 0:  # a common term: read through its doc bitmap
            block = docs >> BLOCK_SHIFT
            word = self.store.bits[row][block]
            bit = (docs & 63).astype(np.uint64)
            present = ((word >> bit) & _ONE).astype(bool)
            at = self.store.bit_ranks[row][block] + np.bitwise_count(word & ((_ONE << bit) - _ONE))
            return np.where(present, tfs[np.where(present, at, 0)], 0).astype(np.float64)
        if docs.size * LOOKUP_SHARE < n:
            at = np.searchsorted(posted, docs)
            np.minimum(at, n - 1, out=at)
            return np.where(posted[at] == docs, tfs[at], 0).astype(np.float64)
        if self._table is None:
            self._table = np.zeros(self.store.size, dtype=np.uint16)
        self._table[posted] = tfs
        found = self._table[docs].astype(np.float64)
        self._table[posted] = 0
        return found


def _block_rest(seg: _Segment, optional: Sequence[int], weight: Sequence[float], avgdl: float) -> _Floats:
    """Row i, per block of the segment: what the optional terms from the i-th on can add to a doc of
    the block (their block bounds where kept, else their bounds in the segment; 0 where absent);
    the last row 0. With SLACK."""
    store = seg.store
    blocks = (store.size + (1 << BLOCK_SHIFT) - 1) >> BLOCK_SHIFT
    rows = np.zeros((len(optional) + 1, blocks), dtype=np.float64)
    for i, j in enumerate(optional):
        if not seg.found[j]:
            continue
        row = int(store.block_rows[seg.index[j]])
        if row >= 0:
            tf_max = store.block_max_tfs[row].astype(np.float64)
            len_min = store.block_min_lengths[row].astype(np.int64)
        else:
            tf_max = np.full(blocks, float(store.max_tfs[seg.index[j]]))
            len_min = np.full(blocks, int(store.min_lengths[seg.index[j]]), dtype=np.int64)
        rows[i] = weight[j] * tf_max / (tf_max + _norm(len_min, avgdl))
    rows *= 1 + SLACK
    return np.cumsum(rows[::-1], axis=0)[::-1]


def _norm(lengths: npt.NDArray[np.int64], avgdl: float) -> _Floats:
    """K(len), written as `bm25.rank` writes it (the same float operations, the same bits)."""
    return np.asarray(BM25_K1 * (1 - BM25_B + BM25_B * lengths / avgdl), dtype=np.float64)


@dataclass(slots=True)
class _Query:
    """One search's statistics and state: its segments, each term's weight (idf * (k1 + 1)), the average
    length, the k asked for, and the work counter."""

    segments: list[_Segment]
    weight: list[float]
    avgdl: float
    limit: int
    work: Work

    def exact(self, seg: _Segment, docs: _Docs) -> _Floats:
        """Full scores of `docs`, summed in term order as `bm25.rank` sums them."""
        norm = _norm(seg.store.lengths[docs], self.avgdl)
        scores = np.zeros(docs.shape[0], dtype=np.float64)
        for j in np.flatnonzero(seg.found).tolist():
            tf = seg.tfs(j, docs)
            scores += self.weight[j] * tf / (tf + norm)  # where tf is 0 this adds 0.0: the same bits
        return scores


def top_k(
    stores: Sequence[Postings],
    hashes: Hashes | Sequence[int],
    limit: int,
    allowed: Collection[str] | None = None,
    work: Work | None = None,
    *,
    seed_docs: int | None = None,
) -> list[Candidate]:
    """The `limit` best chunks of `stores` for the query terms `hashes` by exact Okapi BM25, best first
    (ties: lower chunk id first); only chunks of the files `allowed` if given. N, df and the average
    length are those of `stores` together. Equal to `bm25.rank`; see the module's description
    (`work`, if given, counts what it did; `seed_docs`: the docs scored for the first threshold).
    Blocking (numpy): run it off the event loop."""
    terms = np.array(sorted({int(h) for h in hashes}), dtype=np.uint64)
    n = sum(s.live for s in stores)
    if not terms.size or n == 0 or limit <= 0 or (allowed is not None and not allowed):
        return []
    work = work if work is not None else Work()
    avgdl = max(sum(s.live_length for s in stores) / n, 1.0)
    segments = [_Segment(s, terms, allowed) for s in stores if s.size]
    df = np.zeros(terms.size, dtype=np.int64)
    for seg in segments:
        df += seg.df
    weight = [math.log(1.0 + (n - d + 0.5) / (d + 0.5)) * (BM25_K1 + 1) if d else 0.0 for d in df.tolist()]
    work.postings += sum(int((seg.hi - seg.lo).sum()) for seg in segments)
    query = _Query(segments, weight, avgdl, limit, work)

    # Each term's bound under these statistics: the largest over the segments holding it.
    bound = np.zeros(terms.size, dtype=np.float64)
    for seg in segments:
        tf_max = np.where(seg.found, seg.store.max_tfs[seg.index], 0).astype(np.float64)
        len_min = np.where(seg.found, seg.store.min_lengths[seg.index], 0)
        np.maximum(bound, np.asarray(weight) * tf_max / (tf_max + _norm(len_min, avgdl)), out=bound)
    bound *= 1 + SLACK
    present = [j for j in np.argsort(-bound, kind="stable").tolist() if df[j]]  # highest bound first
    if not present:
        return []

    if seed_docs is None:
        seed_docs = min(max(n // SEED_SHARE, SEED_DOCS[0]), SEED_DOCS[1])
    theta = _threshold(query, present, df, max(seed_docs, 4 * limit))
    work.theta = theta
    floor = theta * (1 - SLACK)

    # (2) Non-essential terms: the lowest bounds, together below theta.
    rest = 0.0
    cut = len(present)
    while cut > 0 and rest + float(bound[present[cut - 1]]) < floor:
        cut -= 1
        rest += float(bound[present[cut]])
    essential, optional = sorted(present[:cut]), present[cut:]

    need = floor - rest * (1 + SLACK)
    found_scores: list[_Floats] = []
    found_docs: list[tuple[_Segment, _Docs]] = []
    for seg in segments:  # one segment at a time: its score array stays in cache
        partial = _essential_scores(query, seg, essential)
        candidates = seg.usable(np.flatnonzero(partial >= need) if need > 0 else np.flatnonzero(partial))
        if not candidates.size:
            continue
        candidates, scores = _look_up_optional(query, seg, candidates, partial[candidates], optional, floor)
        if candidates.size:
            found_scores.append(scores)
            found_docs.append((seg, candidates))
    if not found_scores:
        return []
    return _rescored(query, found_docs, found_scores)


def _threshold(query: _Query, present: Sequence[int], df: npt.NDArray[np.int64], target: int) -> float:
    """(1) A lower bound of the k-th best score: the k-th best exact score of about `target` distinct docs
    (a doc counted twice could lift the k-th score above the true one) from the postings of the terms
    with the highest bounds (`present`, in that order), sampled evenly; 0 if fewer than k."""
    segments = query.segments
    picked: list[list[npt.NDArray[np.int32]]] = [[] for _ in segments]
    taken = 0
    for j in present:
        for seg, parts in zip(segments, picked, strict=True):
            posted, _ = seg.postings(j)
            share = -(-(target - taken) * posted.shape[0] // int(df[j]))  # this segment's part of what is needed
            if posted.shape[0] > share:
                posted = posted[:: -(-posted.shape[0] // share)]  # an even sample
            parts.append(posted)
        taken += int(df[j])
        if taken >= target:
            break
    seeds: list[_Floats] = []
    for seg, parts in zip(segments, picked, strict=True):
        sample = seg.usable(np.unique(np.concatenate(parts)).astype(np.int64))
        if sample.size:
            seeds.append(query.exact(seg, sample))
    seed_scores = np.concatenate(seeds) if seeds else np.zeros(0)
    limit = query.limit
    return float(-np.partition(-seed_scores, limit - 1)[limit - 1]) if seed_scores.size >= limit else 0.0


def _essential_scores(query: _Query, seg: _Segment, essential: Sequence[int]) -> _Floats:
    """(3) The essential terms' postings in one segment, scored densely: one count over its docs."""
    spans = [j for j in essential if seg.found[j]]
    total = sum(int(seg.hi[j] - seg.lo[j]) for j in spans)
    # Filled in place, one pass per operation (these arrays are one element per posting scanned). Not
    # `bm25.rank`'s float operations (K(len) as a + c * len): step (5) scores the survivors again.
    all_docs = np.empty(total, dtype=np.int32)
    gains = np.empty(total, dtype=np.float64)
    a, c = BM25_K1 * (1 - BM25_B), BM25_K1 * BM25_B / query.avgdl
    at = 0
    for j in spans:
        docs, tfs = seg.postings(j)
        out = gains[at : at + docs.shape[0]]
        all_docs[at : at + docs.shape[0]] = docs
        np.multiply(seg.store.lengths[docs], c, out=out)
        out += a
        tf = tfs.astype(np.float64)
        out += tf
        np.divide(tf, out, out=out)
        out *= query.weight[j]
        at += docs.shape[0]
    query.work.scanned += total
    return np.asarray(np.bincount(all_docs, weights=gains, minlength=seg.store.size), dtype=np.float64)


def _look_up_optional(
    query: _Query, seg: _Segment, candidates: _Docs, scores: _Floats, optional: Sequence[int], floor: float
) -> tuple[_Docs, _Floats]:
    """(4) The optional terms, looked up for one segment's candidates (with their partial `scores`): a
    candidate stays while its partial score plus what the terms still to look up can add in its block
    reaches theta (`floor`: theta less the slack)."""
    remaining = _block_rest(seg, optional, query.weight, query.avgdl)
    block = candidates >> BLOCK_SHIFT
    keep = scores + remaining[0][block] >= floor
    candidates, scores, block = candidates[keep], scores[keep], block[keep]
    norm = _norm(seg.store.lengths[candidates], query.avgdl)
    for i, j in enumerate(optional):
        if not candidates.size:
            break
        if seg.found[j]:
            query.work.looked_up += int(candidates.shape[0])
            tf = seg.tfs(j, candidates)
            scores = scores + query.weight[j] * tf / (tf + norm)
        keep = scores + remaining[i + 1][block] >= floor
        candidates, scores, norm, block = candidates[keep], scores[keep], norm[keep], block[keep]
    return candidates, scores


def _rescored(
    query: _Query, found_docs: Sequence[tuple[_Segment, _Docs]], found_scores: Sequence[_Floats]
) -> list[Candidate]:
    """(5) The k best (and any within the slack of the k-th), scored again in term order."""
    limit = query.limit
    all_scores = np.concatenate(found_scores)
    kth = float(-np.partition(-all_scores, limit - 1)[limit - 1]) if all_scores.size > limit else 0.0
    final_scores: list[_Floats] = []
    final_ids: list[_Docs] = []
    for (seg, kept), scores in zip(found_docs, found_scores, strict=True):
        best = kept[scores >= kth * (1 - SLACK)]
        if best.size:
            final_scores.append(query.exact(seg, best))
            final_ids.append(seg.store.chunk_ids[best])
    scores_all = np.concatenate(final_scores)
    ids_all = np.concatenate(final_ids)
    order = np.lexsort((ids_all, -scores_all))[:limit]
    return [Candidate(int(ids_all[i]), float(scores_all[i])) for i in order]
