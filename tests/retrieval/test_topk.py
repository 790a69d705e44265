"""`topk.top_k` returns exactly `bm25.rank`'s top k (ids, scores, tie order) and a brute-force BM25's,
on generated stores where its pruning engages: many segments, skewed terms and lengths, deletes,
merged segments, several stores searched together (their statistics, not any one store's), file
filters, ties at the cut, k larger than the matches; and it skips most of the postings on skewed
queries (counted), so it cannot quietly turn back into the dense pass."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import pytest

from loom.retrieval.analysis import encode, query_hashes
from loom.retrieval.bm25 import BIT_TERM_SHARE, BLOCK_SHIFT, BLOCK_TERM_SHARE, Postings, rank
from loom.retrieval.index import Candidate
from loom.retrieval.topk import Work, _Segment, top_k
from tests.retrieval.support import brute_bm25

WORDS = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(300)]
FILES = ["f0", "f1", "f2"]

Doc = tuple[int, str, str]  # chunk id, file id, text


def _docs(rng: np.random.Generator, first_id: int, size: int) -> list[Doc]:
    """Zipf-distributed words (a few in most docs, most in few), lengths from 1 to 80."""
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    out = []
    for i in range(size):
        length = int(rng.integers(1, 80))
        words = [WORDS[k] for k in rng.choice(len(WORDS), size=length, p=p)]
        out.append((first_id + i, FILES[int(rng.integers(0, len(FILES)))], " ".join(words)))
    return out


def _build(docs: Sequence[Doc]) -> Postings:
    rows = [(cid, FILES.index(f), e.terms, e.tfs, e.length) for cid, f, t in docs for e in [encode(t)]]
    return Postings.build(rows, FILES)


def _segments(docs: Sequence[Doc], cuts: Sequence[int]) -> list[Postings]:
    bounds = [0, *cuts, len(docs)]
    return [_build(docs[a:b]) for a, b in pairwise(bounds)]


def _query(rng: np.random.Generator) -> list[str]:
    """One to seven words: common ones (from the head) and rarer ones, as queries mix them."""
    head = [WORDS[int(k)] for k in rng.integers(0, 8, size=int(rng.integers(0, 4)))]
    tail = [WORDS[int(k)] for k in rng.integers(8, len(WORDS), size=int(rng.integers(1, 4)))]
    return head + tail


def _same(got: list[Candidate], want: list[Candidate]) -> None:
    assert [c.chunk_id for c in got] == [c.chunk_id for c in want]
    assert [c.score for c in got] == pytest.approx([c.score for c in want], rel=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_top_k_equals_the_dense_pass_and_brute_force_over_stores_searched_together(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = _docs(rng, 1, 1500)
    b = _docs(rng, 10_001, 400)  # another store: searching both uses both stores' statistics
    stores = {"a": _segments(a, [700, 1100, 1101]), "b": _segments(b, [250])}
    texts = {"a": a, "b": b}
    pruned = Work()
    for _ in range(25):
        words = _query(rng)
        hashes = query_hashes(words)
        for names in (["a"], ["a", "b"]):
            segments = [s for name in names for s in stores[name]]
            everything = {cid: (f, t) for name in names for cid, f, t in texts[name]}
            for limit in (1, 10, 100, 5000):
                for allowed in (None, {"f1"}, {"f0", "f2"}):
                    for seed_docs in (8, 1024):
                        work = Work()
                        got = top_k(segments, hashes, limit, allowed, work, seed_docs=seed_docs)
                        assert got == rank(segments, hashes, limit, allowed)  # bit for bit
                        if seed_docs == 8:
                            pruned.postings += work.postings
                            pruned.scanned += work.scanned
            _same(top_k(segments, hashes, 10), brute_bm25(everything, words, 10))
    assert pruned.scanned < pruned.postings  # the pruning engaged, not only the dense pass


@pytest.mark.parametrize("seed", [5, 6])
def test_removed_docs_and_merged_segments_stay_exact(seed: int) -> None:
    rng = np.random.default_rng(seed)
    docs = _docs(rng, 1, 1200)
    segments = _segments(docs, [500, 900])
    # Delete a file's docs in the first segment and every third doc of the second (masked, no rebuild).
    gone0 = segments[0].file_codes == FILES.index("f1")
    gone1 = np.zeros(segments[1].size, dtype=bool)
    gone1[::3] = True
    masked = [segments[0].remove(gone0), segments[1].remove(gone1), segments[2]]
    left_ids = set(masked[0].chunk_ids[~gone0].tolist()) | set(masked[1].chunk_ids[~gone1].tolist())
    left_ids |= set(masked[2].chunk_ids.tolist())
    left = {cid: (f, t) for cid, f, t in docs if cid in left_ids}
    merged = [Postings.merge(masked[:2]), masked[2]]
    compacted = [s.compact() for s in masked]
    for _ in range(30):
        words = _query(rng)
        hashes = query_hashes(words)
        for limit in (1, 20, 2000):
            want = rank(masked, hashes, limit)
            for variant in (masked, merged, compacted):
                for seed_docs in (4, 1024):
                    assert top_k(variant, hashes, limit, seed_docs=seed_docs) == want
            assert {c.chunk_id for c in want} <= left_ids
        _same(top_k(masked, hashes, 15, seed_docs=4), brute_bm25(left, words, 15))


def test_ties_at_the_cut_fall_by_chunk_id() -> None:
    """Forty docs score the same (same words, same length) across segments, with ids out of order;
    the cut at k falls inside them: the lowest ids are kept, as the dense pass keeps them."""
    rng = np.random.default_rng(9)
    ids = rng.permutation(np.arange(1, 41)) * 7
    tied = [(int(i), "f0", "wzz wzz wya waa") for i in ids]
    noise = _docs(rng, 1000, 600)
    docs = noise[:300] + tied[:20] + noise[300:] + tied[20:]
    segments = _segments(docs, [310, 640])
    hashes = query_hashes(["wzz", "waa"])
    for limit in (5, 25, 39, 40, 41):
        for seed_docs in (2, 16, 1024):
            got = top_k(segments, hashes, limit, seed_docs=seed_docs)
            assert got == rank(segments, hashes, limit)
    top = top_k(segments, hashes, 25, seed_docs=2)
    assert [c.chunk_id for c in top] == sorted(int(i) for i in ids)[:25]
    assert len({c.score for c in top}) == 1


def test_k_larger_than_the_matches_and_edge_cases() -> None:
    rng = np.random.default_rng(11)
    segments = _segments(_docs(rng, 1, 300), [100])
    hashes = query_hashes(["wkz", "wla"])  # rare: few matches
    want = rank(segments, hashes, 10_000)
    assert 0 < len(want) < 100
    assert top_k(segments, hashes, 10_000, seed_docs=1) == want
    assert top_k(segments, query_hashes(["absent"]), 5) == []
    assert top_k(segments, hashes, 0) == []
    assert top_k(segments, hashes, 5, allowed=set()) == []
    assert top_k([], hashes, 5) == []
    assert top_k([Postings.build([]), *segments], hashes, 5) == rank(segments, hashes, 5)


def test_pruning_skips_most_postings_on_a_skewed_query() -> None:
    """A rare word and three common ones over 4000 docs: the top 10 are decided by the rare word's
    docs, and the common words' postings are looked up for candidates, not scanned. Counted, so the
    method cannot silently degrade to scoring every posting."""
    rng = np.random.default_rng(13)
    docs = _docs(rng, 1, 4000)
    segments = _segments(docs, [1000, 2000, 3000])
    hashes = query_hashes(["waa", "wab", "wac", "wfz"])
    work = Work()
    assert top_k(segments, hashes, 10, work=work) == rank(segments, hashes, 10)
    assert work.theta > 0
    assert work.postings > 4000  # the common words hold thousands of postings
    assert work.scanned < 0.1 * work.postings
    assert work.looked_up < 0.5 * work.postings


def _built_merged_compacted(seed: int, size: int, cut: int, removed: slice) -> list[Postings]:
    """Two segments as built, the two merged, and the merged one compacted after removing `removed` docs."""
    parts = _segments(_docs(np.random.default_rng(seed), 1, size), [cut])
    whole = Postings.merge(parts)
    gone = np.zeros(whole.size, dtype=bool)
    gone[removed] = True
    return [*parts, whole, whole.remove(gone).compact()]


def test_bounds_per_term_and_block_hold_after_build_merge_and_compact() -> None:
    variants = _built_merged_compacted(17, 500, 200, slice(None, None, 2))
    for p in variants:
        blocks = (p.size + (1 << BLOCK_SHIFT) - 1) >> BLOCK_SHIFT
        assert p.block_max_tfs.shape == p.block_min_lengths.shape == (int((p.block_rows >= 0).sum()), blocks)
        for i in range(p.terms.shape[0]):
            lo, hi = int(p.offsets[i]), int(p.offsets[i + 1])
            assert p.max_tfs[i] == p.tfs[lo:hi].max()
            assert p.min_lengths[i] == p.lengths[p.docs[lo:hi]].min()
            row = int(p.block_rows[i])
            assert (row >= 0) == (hi - lo >= p.size / BLOCK_TERM_SHARE)  # the common terms have rows
            if row < 0:
                continue
            in_block = p.docs[lo:hi] >> BLOCK_SHIFT
            for b in range(blocks):
                here = in_block == b
                assert p.block_max_tfs[row, b] == (p.tfs[lo:hi][here].max() if here.any() else 0)
                if here.any():
                    assert p.block_min_lengths[row, b] == p.lengths[p.docs[lo:hi][here]].min()
    assert int((variants[2].block_rows >= 0).sum()) > 3  # some terms are common enough to have rows


def test_doc_bitmaps_give_every_docs_tf_after_build_merge_and_compact() -> None:
    variants = _built_merged_compacted(23, 700, 300, slice(1, None, 3))
    every = np.arange(variants[2].size)
    for p in variants:
        blocks = (p.size + 63) >> 6
        assert p.bits.shape == p.bit_ranks.shape == (int((p.bit_rows >= 0).sum()), blocks)
        segment = _Segment(p, p.terms, None)
        for i in range(p.terms.shape[0]):
            lo, hi = int(p.offsets[i]), int(p.offsets[i + 1])
            row = int(p.bit_rows[i])
            assert (row >= 0) == (hi - lo >= p.size / BIT_TERM_SHARE)  # the common terms have bitmaps
            want = np.zeros(p.size)
            want[p.docs[lo:hi]] = p.tfs[lo:hi]
            docs_here = every[: p.size]
            assert np.array_equal(segment.tfs(i, docs_here), want)  # every doc, held or not
            assert np.array_equal(segment.tfs(i, docs_here[::7]), want[::7])  # and a few
    assert int((variants[2].bit_rows >= 0).sum()) > 3
