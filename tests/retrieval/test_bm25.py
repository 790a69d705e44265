"""`loom.retrieval.bm25`: the analyzer, the stored encoding, and `rank` against a brute-force BM25."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Collection, Sequence

import numpy as np
import pytest

from loom.retrieval.analysis import TF_MAX, analyze, encode, query_hashes
from loom.retrieval.bm25 import Postings, rank
from loom.retrieval.index import Candidate
from tests.retrieval.support import brute_bm25

Doc = tuple[int, str, str]  # chunk id, file id, text


def test_analyzer_folds_diacritics_lowercases_and_stems() -> None:
    assert analyze("Café NAÏVE Résumés") == ["cafe", "naiv", "resum"]
    assert analyze("running runs Runner") == ["run", "run", "runner"]


def test_analyzer_splits_on_underscores_and_punctuation_keeps_digits() -> None:
    assert analyze("snake_case, x-ray 2024!") == ["snake", "case", "x", "ray", "2024"]
    # A compatibility decomposition that yields a separator splits the word, as FTS5's unicode61 did.
    assert analyze("ﬁsh ½") == ["fish", "1", "2"]


def test_encode_counts_distinct_terms_sorted_with_frequencies_and_length() -> None:
    enc = encode("The cats sat; the cat sat on the mat.")
    terms = np.frombuffer(enc.terms, dtype="<u8")
    tfs = np.frombuffer(enc.tfs, dtype="<u2")
    assert enc.length == 9
    assert list(terms) == sorted(terms)
    by_hash = dict(zip(terms.tolist(), tfs.tolist(), strict=True))
    expected = Counter(analyze("The cats sat; the cat sat on the mat."))
    assert sorted(by_hash.values()) == sorted(expected.values())
    assert by_hash[int(query_hashes(["cat"])[0])] == 2
    assert by_hash[int(query_hashes(["the"])[0])] == 3


def test_term_hash_is_blake2b_of_the_stem_little_endian() -> None:
    # The stored format: a term is the first 8 bytes of BLAKE2b of its stem, stable across processes.
    want = int.from_bytes(hashlib.blake2b(b"cafe", digest_size=8).digest(), "little")
    assert np.frombuffer(encode("Cafés").terms, dtype="<u8").tolist() == [want]
    assert query_hashes(["café", "CAFE", "cafes"]).tolist() == [want]


def test_term_frequency_saturates_and_empty_text_encodes_empty() -> None:
    enc = encode("echo " * (TF_MAX + 10))
    assert np.frombuffer(enc.tfs, dtype="<u2").tolist() == [TF_MAX]
    assert enc.length == TF_MAX + 10
    empty = encode(" _ ... ")
    assert (empty.terms, empty.tfs, empty.length) == (b"", b"", 0)


def _postings(docs: Sequence[Doc]) -> Postings:
    codes: dict[str, int] = {}
    rows = []
    for chunk_id, file_id, text in docs:
        enc = encode(text)
        rows.append((chunk_id, codes.setdefault(file_id, len(codes)), enc.terms, enc.tfs, enc.length))
    return Postings.build(rows, list(codes))


def _brute(
    stores: Sequence[Sequence[Doc]], words: Sequence[str], limit: int, allowed: Collection[str] | None = None
) -> list[Candidate]:
    return brute_bm25({cid: (fid, text) for store in stores for cid, fid, text in store}, words, limit, allowed)


def _assert_same(got: Sequence[Candidate], want: Sequence[Candidate]) -> None:
    assert [c.chunk_id for c in got] == [c.chunk_id for c in want]
    assert [c.score for c in got] == pytest.approx([c.score for c in want], rel=1e-12)


VOCAB = [
    "protein", "proteins", "cell", "cells", "gene", "genes", "expression", "tumour", "tumor", "café",
    "resistance", "binding", "receptor", "mouse", "mice", "human", "signal", "signalling", "kinase", "rna",
]  # fmt: skip


def _corpus(rng: random.Random, first_id: int, size: int, files: int) -> list[Doc]:
    docs = []
    for i in range(size):
        length = rng.randint(0, 30)
        # Skewed word choice: some terms common, some rare.
        words = [VOCAB[min(int(rng.expovariate(0.25)), len(VOCAB) - 1)] for _ in range(length)]
        docs.append((first_id + 3 * i, f"file-{rng.randrange(files)}", " ".join(words)))
    return docs


@pytest.mark.parametrize("seed", range(12))
def test_rank_equals_brute_force_over_several_stores_and_filters(seed: int) -> None:
    rng = random.Random(seed)
    stores = [_corpus(rng, 1 + 100_000 * s, rng.randint(1, 120), files=4) for s in range(rng.randint(1, 3))]
    postings = [_postings(s) for s in stores]
    for _ in range(6):
        words = rng.sample(VOCAB, rng.randint(1, 4))
        limit = rng.choice([1, 3, 10, 50, 1000])
        _assert_same(rank(postings, query_hashes(words), limit), _brute(stores, words, limit))
        allowed = {f"file-{f}" for f in range(4) if rng.random() < 0.5}
        _assert_same(rank(postings, query_hashes(words), limit, allowed), _brute(stores, words, limit, allowed))


def test_statistics_are_those_of_the_searched_stores_only() -> None:
    rng = random.Random(7)
    mine = _corpus(rng, 1, 80, files=2)
    other = [(10_000 + i, "file-x", "protein protein cell " * 5) for i in range(300)]
    alone = rank([_postings(mine)], query_hashes(["protein", "kinase"]), 10)
    _assert_same(alone, _brute([mine], ["protein", "kinase"], 10))
    # Searching `mine` is unaffected by another store existing; searching both counts both.
    assert rank([_postings(mine)], query_hashes(["protein", "kinase"]), 10) == alone
    both = rank([_postings(mine), _postings(other)], query_hashes(["protein", "kinase"]), 10)
    _assert_same(both, _brute([mine, other], ["protein", "kinase"], 10))
    assert both != alone


def test_ties_are_broken_by_chunk_id_across_stores_and_at_the_cut() -> None:
    a = [(9, "f", "gene gene cell"), (4, "f", "gene gene cell"), (7, "f", "mouse")]
    b = [(2, "g", "gene gene cell"), (5, "g", "gene gene cell"), (1, "g", "rna")]
    got = rank([_postings(a), _postings(b)], query_hashes(["gene"]), 3)
    assert [c.chunk_id for c in got] == [2, 4, 5]
    assert got[0].score == got[1].score == got[2].score > 0
    _assert_same(got, _brute([a, b], ["gene"], 3))


def test_rank_edge_cases() -> None:
    store = _postings([(1, "f", "alpha beta"), (2, "f", "")])
    assert rank([store], query_hashes(["gamma"]), 5) == []
    assert rank([store], query_hashes([]), 5) == []
    assert rank([store], query_hashes(["alpha"]), 0) == []
    assert rank([store], query_hashes(["alpha"]), 5, allowed=set()) == []
    assert rank([store], query_hashes(["alpha"]), 5, allowed={"other"}) == []
    assert rank([], query_hashes(["alpha"]), 5) == []
    empty = Postings.build([])
    assert empty.size == 0 and rank([empty], query_hashes(["alpha"]), 5) == []
    assert [c.chunk_id for c in rank([empty, store], query_hashes(["alpha"]), 5)] == [1]


def test_build_refuses_mismatched_blobs() -> None:
    enc = encode("alpha beta")
    with pytest.raises(ValueError):
        Postings.build([(1, 0, enc.terms, enc.tfs[:2], enc.length)])


def test_postings_are_sorted_csr() -> None:
    rng = random.Random(3)
    docs = _corpus(rng, 1, 200, files=3)
    p = _postings(docs)
    assert np.all(p.terms[1:] > p.terms[:-1])
    assert p.offsets[0] == 0 and p.offsets[-1] == p.docs.shape[0] == p.tfs.shape[0]
    for j, term in enumerate(p.terms.tolist()):
        lo, hi = p.span(term)
        assert (lo, hi) == (p.offsets[j], p.offsets[j + 1])
        assert np.all(np.diff(p.docs[lo:hi]) > 0)  # each term's docs distinct, ascending
    assert p.total_length == sum(len(analyze(t)) for _, _, t in docs)


def test_merged_parts_rank_as_one_built_index() -> None:
    rng = random.Random(11)
    docs = _corpus(rng, 1, 300, files=5)
    whole = _postings(docs)
    # Parts built with the store-wide file codes (as an index appending batches keeps them).
    codes = {f: i for i, f in enumerate(whole.file_ids)}
    rows = []
    for chunk_id, file_id, text in docs:
        enc = encode(text)
        rows.append((chunk_id, codes[file_id], enc.terms, enc.tfs, enc.length))
    parts = [Postings.build(rows[a:b], whole.file_ids) for a, b in ((0, 0), (0, 120), (120, 121), (121, 300))]
    merged = Postings.merge(parts)
    for name in ("terms", "offsets", "docs", "tfs", "chunk_ids", "file_codes", "lengths"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    assert merged.total_length == whole.total_length and merged.file_ids == whole.file_ids
    for words in (["protein", "cell"], ["mouse"], ["rna", "kinase", "human"]):
        want = rank([whole], query_hashes(words), 20, {"file-1", "file-3"})
        assert rank(parts, query_hashes(words), 20, {"file-1", "file-3"}) == want
        assert rank([merged], query_hashes(words), 20, {"file-1", "file-3"}) == want
    assert Postings.merge([]).size == 0


def test_parts_with_their_own_file_codes_merge_into_one_code_space() -> None:
    """Parts built each with its own file codes (as a replica's delta loads are) are renumbered by file
    name when merged: filtering the merged index by file gives what one build of all docs gives."""
    rng = random.Random(12)
    docs = _corpus(rng, 1, 300, files=5)
    whole = _postings(docs)
    parts = [_postings(docs[a:b]) for a, b in ((0, 90), (90, 200), (200, 300))]
    assert len({p.file_ids for p in parts}) > 1  # the parts number their files differently
    merged = Postings.merge(parts)
    assert sorted(merged.file_ids) == sorted(whole.file_ids)
    for allowed in ({"file-1", "file-3"}, {"file-0"}, None):
        for words in (["protein", "cell"], ["mouse"], ["rna", "kinase", "human"]):
            assert rank([merged], query_hashes(words), 20, allowed) == rank([whole], query_hashes(words), 20, allowed)


@pytest.mark.parametrize("seed", range(8))
def test_removed_docs_leave_exact_bm25_of_what_is_left(seed: int) -> None:
    # Docs masked out (no rebuild) are out of N, df, the average length and the results: rank equals
    # BM25 over the docs left, and so do the compacted and the merged indexes.
    rng = random.Random(100 + seed)
    stores = [_corpus(rng, 1 + 100_000 * s, rng.randint(1, 120), files=4) for s in range(rng.randint(1, 3))]
    postings = [_postings(s) for s in stores]
    left = [list(s) for s in stores]
    for _ in range(3):
        gone = f"file-{rng.randrange(4)}"
        postings = [p.remove(p.file_codes == p.file_ids.index(gone)) if gone in p.file_ids else p for p in postings]
        left = [[d for d in s if d[1] != gone] for s in left]
        assert [p.live for p in postings] == [len(s) for s in left]
        for _ in range(4):
            words = rng.sample(VOCAB, rng.randint(1, 4))
            limit = rng.choice([1, 3, 10, 1000])
            allowed = {f"file-{f}" for f in range(4) if rng.random() < 0.6}
            want = _brute(left, words, limit, allowed)
            _assert_same(rank(postings, query_hashes(words), limit, allowed), want)
            compacted = [p.compact() for p in postings]
            assert [p.size for p in compacted] == [len(s) for s in left]
            _assert_same(rank(compacted, query_hashes(words), limit, allowed), want)
            merged = [Postings.merge([p, Postings.build([], p.file_ids)]) for p in postings]  # per store
            _assert_same(rank(merged, query_hashes(words), limit, allowed), want)


def test_compact_equals_a_fresh_build_of_the_docs_left() -> None:
    rng = random.Random(5)
    docs = _corpus(rng, 1, 250, files=4)
    whole = _postings(docs)
    gone = np.isin(whole.file_codes, [whole.file_ids.index("file-1"), whole.file_ids.index("file-3")])
    removed = whole.remove(gone)
    assert removed.removed_docs == int(gone.sum()) and removed.live == whole.size - int(gone.sum())
    assert removed.live_length == int(whole.lengths[~gone].sum())
    compacted = removed.compact()
    codes = {f: i for i, f in enumerate(whole.file_ids)}
    rows = []
    for chunk_id, file_id, text in docs:
        if file_id not in ("file-1", "file-3"):
            enc = encode(text)
            rows.append((chunk_id, codes[file_id], enc.terms, enc.tfs, enc.length))
    fresh = Postings.build(rows, whole.file_ids)
    for name in ("terms", "offsets", "docs", "tfs", "chunk_ids", "file_codes", "lengths"):
        assert np.array_equal(getattr(compacted, name), getattr(fresh, name)), name
    assert compacted.total_length == fresh.total_length and compacted.removed is None
    # Removing nothing more returns the same index; removing everything leaves nothing to rank.
    assert removed.remove(np.zeros(whole.size, dtype=bool)) is removed
    none_left = whole.remove(np.ones(whole.size, dtype=bool))
    assert none_left.live == 0 and rank([none_left], query_hashes(["protein"]), 5) == []
    assert none_left.compact().size == 0 and none_left.compact().terms.size == 0


def test_terms_sharing_their_top_hash_bits_still_build_exact_postings() -> None:
    # The fast build packs a term's top hash bits with the doc and tf into one sortable integer; two
    # terms equal in those bits must not be merged (the build sorts by the full hash instead).
    near = [np.uint64(0xABCD_0000_0000_0001), np.uint64(0xABCD_0000_0000_0002), np.uint64(0x1234_0000_0000_0000)]

    def row(chunk_id: int, terms: list[np.uint64], tfs: list[int]) -> tuple[int, int, bytes, bytes, int]:
        t = np.array(terms, dtype="<u8")
        order = np.argsort(t)
        return chunk_id, 0, t[order].tobytes(), np.array(tfs, dtype="<u2")[order].tobytes(), sum(tfs)

    rows = [row(1, near[:2], [2, 1]), row(2, [near[0]], [3]), row(3, [near[1], near[2]], [1, 1])]
    p = Postings.build(rows, ["f"])
    assert p.terms.tolist() == sorted(int(h) for h in near)
    assert {int(t): p.docs[slice(*p.span(int(t)))].tolist() for t in near} == {
        int(near[0]): [0, 1],
        int(near[1]): [0, 2],
        int(near[2]): [2],
    }
    assert p.tfs[slice(*p.span(int(near[0])))].tolist() == [2, 3]
    got = rank([p], [int(near[0])], 5)
    assert [c.chunk_id for c in got] == [2, 1]
