"""`topk.maxscore_rank` returns exactly `bm25.rank`'s top k (ids, scores, tie order), across segments
and file filters, on stores where MaxScore stops early and where it falls back to the dense pass."""

from __future__ import annotations

import numpy as np
import pytest

from loom.retrieval import topk
from loom.retrieval.bm25 import Postings, encode, query_hashes, rank
from loom.retrieval.topk import maxscore_rank

WORDS = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(300)]


def _segments(seed: int, sizes: list[int]) -> list[Postings]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)  # Zipf: a few words in most chunks, most in few
    p /= p.sum()
    out, next_id = [], 1
    for size in sizes:
        rows = []
        for i in range(size):
            length = int(rng.integers(3, 40))
            e = encode(" ".join(WORDS[k] for k in rng.choice(len(WORDS), size=length, p=p)))
            rows.append((next_id, i % 3, e.terms, e.tfs, e.length))
            next_id += 1
        out.append(Postings.build(rows, ["f0", "f1", "f2"]))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_maxscore_equals_the_dense_ranking(seed: int) -> None:
    stores = _segments(seed, [700, 200, 50])
    rng = np.random.default_rng(seed + 100)
    early = 0
    for _ in range(60):
        words = [WORDS[int(k)] for k in rng.choice(len(WORDS), size=int(rng.integers(1, 6)))]
        hashes = query_hashes(words)
        for limit in (1, 10, 100):
            for allowed in (None, {"f1"}, {"f0", "f2"}):
                want = rank(stores, hashes, limit, allowed)
                got = maxscore_rank(stores, hashes, limit, allowed)
                assert got == want
        # Counted: queries whose rarest term alone decides the top 10 (MaxScore stopped early).
        df = sorted(sum(s.span(int(h))[1] - s.span(int(h))[0] for s in stores) for h in hashes)
        early += df[0] * 10 < sum(df)
    assert early  # the early stop is exercised, not only the dense fallback


def test_dense_fallback_gives_the_same() -> None:
    stores = _segments(9, [400])
    hashes = query_hashes(["waa", "wab", "wzz"])
    want = rank(stores, hashes, 20)
    for share in (0.0, 1.0, topk.DENSE_SHARE):  # always dense / never dense / the default
        assert maxscore_rank(stores, hashes, 20, dense_share=share) == want


def test_removed_docs_rank_as_the_dense_pass() -> None:
    stores = _segments(4, [300, 100])
    gone = np.zeros(300, dtype=bool)
    gone[::3] = True
    stores[0] = stores[0].remove(gone)
    hashes = query_hashes(["waa", "wab", "wcd"])
    assert maxscore_rank(stores, hashes, 30) == rank(stores, hashes, 30)
    assert {c.chunk_id for c in maxscore_rank(stores, hashes, 400)}.isdisjoint(
        int(i) for i in stores[0].chunk_ids[gone]
    )
