"""Exact Okapi BM25 over compact postings held in numpy, with statistics of the searched stores only.

Shared by the chunk indexes: a chunk's keywords are analysed once, at ingest (`analysis.encode`), into its
distinct terms as sorted 64-bit hashes, their term frequencies and its length, stored as blobs; a
store's chunks are loaded into one in-memory inverted index (`Postings`, CSR arrays); `rank` scores
every chunk holding a query term (exhaustive, no candidate cap) and returns the exact top k.

BM25: k1 1.2, b 0.75, idf log(1 + (N - df + 0.5) / (df + 0.5)) (as `pg_keywords`), where N, df and
the average length are counted over the searched stores together, so one store's ranking and scores
never depend on what another store holds.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from loom.retrieval.analysis import TERM_DTYPE, TF_DTYPE, Hashes
from loom.retrieval.index import Candidate

BM25_K1 = 1.2
BM25_B = 0.75
# Block-level bounds (`Postings.block_max_tfs`): blocks of 64 docs, for terms in 1/16 of the docs.
BLOCK_SHIFT = 6
BLOCK_TERM_SHARE = 16
# Doc bitmaps (`Postings.bits`), for terms in 1/8 of the docs: one 64-bit word per block.
BIT_TERM_SHARE = 8

# (chunk id, file code, terms blob, tfs blob, length): one chunk as stored.
PostingsRow = tuple[int, int, bytes, bytes, int]


@dataclass(frozen=True, slots=True)
class Postings:
    """One store's inverted index: CSR over the sorted distinct term hashes (`terms`); the postings of
    `terms[i]` are `docs[offsets[i]:offsets[i + 1]]` (doc indexes) with term frequencies `tfs`
    alongside. Per doc: its chunk id, file code (an index into `file_ids`) and length."""

    terms: Hashes
    offsets: npt.NDArray[np.int64]
    docs: npt.NDArray[np.int32]
    tfs: npt.NDArray[np.uint16]
    chunk_ids: npt.NDArray[np.int64]
    file_codes: npt.NDArray[np.int32]
    lengths: npt.NDArray[np.int64]
    file_ids: tuple[str, ...]
    total_length: int
    # Per term, over its postings: the largest term frequency and the shortest doc length. With any
    # N, df and average length, BM25 is increasing in tf and decreasing in length, so these bound what
    # the term adds to any of its docs' scores (`topk` prunes with them); removed docs leave them
    # upper bounds still.
    max_tfs: npt.NDArray[np.uint16]
    min_lengths: npt.NDArray[np.int64]
    # The same per block of BLOCK docs (doc index >> BLOCK_SHIFT), for the common terms only (in at
    # least 1/BLOCK_TERM_SHARE of the docs: those `topk` looks up rather than scans): term i's row
    # is `block_rows[i]` (-1: none), max tf 0 where the term is not in the block; lengths clipped
    # to 65535 (a smaller length only loosens the bound). A row of 4 bytes per block of 64 docs,
    # for a term in at least 4 of them on average: at most 1/6 of the term's postings' memory.
    block_rows: npt.NDArray[np.int32]
    block_max_tfs: npt.NDArray[np.uint16]
    block_min_lengths: npt.NDArray[np.uint16]
    # For the terms in at least 1/BIT_TERM_SHARE of the docs (row `bit_rows[i]`, -1: none): one bit per
    # doc (bit d % 64 of `bits[row, d // 64]`), and per block how many of the term's postings come
    # before it (`bit_ranks`): a doc's tf is then read without a search, where a binary search of a
    # long postings list costs ~150 ns a doc (`topk` looks these terms up for its candidates). 12 bytes
    # per block of 64 docs, for a term in at least 8 of them on average: at most 1/4 of its postings' memory.
    bit_rows: npt.NDArray[np.int32]
    bits: npt.NDArray[np.uint64]
    bit_ranks: npt.NDArray[np.int32]
    # Docs deleted since the build (None: none): left in the arrays, but out of N, df, the total
    # length and the results, so scores stay exact BM25 of what is left; `compact` drops them.
    removed: npt.NDArray[np.bool_] | None = None
    removed_docs: int = 0
    removed_length: int = 0

    @property
    def size(self) -> int:
        """Docs held, removed ones included (see `live`)."""
        return int(self.chunk_ids.shape[0])

    @property
    def live(self) -> int:
        """Docs held and not removed: this part's share of N."""
        return self.size - self.removed_docs

    @property
    def live_length(self) -> int:
        return self.total_length - self.removed_length

    def remove(self, docs: npt.NDArray[np.bool_]) -> Postings:
        """This index with the docs where `docs` is true removed (a mask over its docs; no rebuild)."""
        mask = docs.astype(bool, copy=True)
        if self.removed is not None:
            mask |= self.removed
        count = int(mask.sum())
        if count == self.removed_docs:
            return self
        return replace(self, removed=mask, removed_docs=count, removed_length=int(self.lengths[mask].sum()))

    def compact(self) -> Postings:
        """This index without its removed docs (a vectorised filter: postings stay sorted by term)."""
        if self.removed is None or self.removed_docs == 0:
            return self if self.removed is None else replace(self, removed=None)
        keep_doc = ~self.removed
        new_index = np.cumsum(keep_doc, dtype=np.int64) - 1
        keep = keep_doc[self.docs]
        kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
        per_term = kept_before[self.offsets[1:]] - kept_before[self.offsets[:-1]]
        alive = per_term > 0
        offsets = np.concatenate(([0], np.cumsum(per_term[alive]))).astype(np.int64)
        return _with_bounds(
            self.terms[alive],
            offsets,
            new_index[self.docs[keep]].astype(np.int32),
            self.tfs[keep],
            self.chunk_ids[keep_doc],
            self.file_codes[keep_doc],
            self.lengths[keep_doc],
            self.file_ids,
        )

    @property
    def nbytes(self) -> int:
        arrays = (
            self.terms,
            self.offsets,
            self.docs,
            self.tfs,
            self.chunk_ids,
            self.file_codes,
            self.lengths,
            self.max_tfs,
            self.min_lengths,
            self.block_rows,
            self.block_max_tfs,
            self.block_min_lengths,
            self.bit_rows,
            self.bits,
            self.bit_ranks,
        )
        return sum(int(a.nbytes) for a in arrays)

    @staticmethod
    def build(rows: Sequence[PostingsRow], file_ids: Sequence[str] = ()) -> Postings:
        """Build from stored rows (vectorised: one join, one sort). Blocking: run it off the event loop.
        `file_ids[code]` names the file of a row's file code (needed only to filter by file)."""
        n = len(rows)
        return Postings.from_arrays(
            np.frombuffer(b"".join(r[2] for r in rows), dtype=TERM_DTYPE),
            np.frombuffer(b"".join(r[3] for r in rows), dtype=TF_DTYPE),
            np.fromiter((len(r[2]) for r in rows), dtype=np.int64, count=n) // TERM_DTYPE.itemsize,
            np.fromiter((r[0] for r in rows), dtype=np.int64, count=n),
            np.fromiter((r[1] for r in rows), dtype=np.int32, count=n),
            np.fromiter((r[4] for r in rows), dtype=np.int64, count=n),
            file_ids,
        )

    @staticmethod
    def from_arrays(
        all_terms: npt.NDArray[Any],
        all_tfs: npt.NDArray[Any],
        widths: npt.NDArray[np.int64],
        chunk_ids: npt.NDArray[np.int64],
        file_codes: npt.NDArray[np.int32],
        lengths: npt.NDArray[np.int64],
        file_ids: Sequence[str] = (),
    ) -> Postings:
        """`build` from the rows' columns already joined: every doc's terms and tfs end to end, and
        how many terms each doc has (`widths`). Blocking: run it off the event loop."""
        if all_terms.shape != all_tfs.shape or int(widths.sum()) != all_terms.shape[0]:
            raise ValueError("keyword blobs of different lengths")
        doc_of = np.repeat(np.arange(chunk_ids.shape[0], dtype=np.int32), widths)
        return _from_postings(all_terms, doc_of, all_tfs, chunk_ids, file_codes, lengths, file_ids)

    @staticmethod
    def merge(parts: Sequence[Postings], file_ids: Sequence[str] | None = None) -> Postings:
        """One index holding the (not removed) docs of `parts` (in order), their file codes renumbered to
        `file_ids` (default: every part's files, in order of appearance) by the names each part's own
        `file_ids` gives them (a part without names keeps its codes). Each part's postings are sorted,
        so the stable sort is a merge of sorted runs."""
        if file_ids is None:
            file_ids = list(dict.fromkeys(f for p in parts for f in p.file_ids))
        index = {f: i for i, f in enumerate(file_ids)}
        parts = [p.compact() for p in parts]
        codes = [
            np.array([index[f] for f in p.file_ids], dtype=np.int32)[p.file_codes] if p.file_ids else p.file_codes
            for p in parts
        ]
        bases = np.cumsum([0] + [p.size for p in parts])
        return _from_postings(
            np.concatenate([np.repeat(p.terms, np.diff(p.offsets)) for p in parts] or [np.zeros(0, np.uint64)]),
            np.concatenate(
                [p.docs + np.int32(b) for p, b in zip(parts, bases, strict=False)] or [np.zeros(0, np.int32)]
            ),
            np.concatenate([p.tfs for p in parts] or [np.zeros(0, np.uint16)]),
            np.concatenate([p.chunk_ids for p in parts] or [np.zeros(0, np.int64)]),
            np.concatenate(codes or [np.zeros(0, np.int32)]),
            np.concatenate([p.lengths for p in parts] or [np.zeros(0, np.int64)]),
            file_ids,
        )

    def span(self, term: int) -> tuple[int, int]:
        """The slice of `docs` / `tfs` holding `term`'s postings (empty if absent)."""
        i = int(np.searchsorted(self.terms, np.uint64(term)))
        if i < self.terms.shape[0] and int(self.terms[i]) == term:
            return int(self.offsets[i]), int(self.offsets[i + 1])
        return 0, 0


def _from_postings(
    all_terms: npt.NDArray[Any],
    doc_of: npt.NDArray[np.int32],
    all_tfs: npt.NDArray[Any],
    chunk_ids: npt.NDArray[np.int64],
    file_codes: npt.NDArray[np.int32],
    lengths: npt.NDArray[np.int64],
    file_ids: Sequence[str],
) -> Postings:
    """CSR from one (term, doc, tf) triple per posting, in any order: sorted by (term, doc)."""
    packed = _packed_csr(all_terms, doc_of, all_tfs)
    if packed is not None:
        terms, offsets, docs, tfs = packed
        return _with_bounds(terms, offsets, docs, tfs, chunk_ids, file_codes, lengths, file_ids)
    order = np.argsort(all_terms, kind="stable")  # stable: each term's docs stay in ascending order
    sorted_terms = all_terms[order]
    starts = np.flatnonzero(sorted_terms[1:] != sorted_terms[:-1]) + 1
    if sorted_terms.size:
        offsets = np.concatenate(([0], starts, [sorted_terms.size])).astype(np.int64)
    else:
        offsets = np.zeros(1, np.int64)
    return _with_bounds(
        sorted_terms[offsets[:-1]].astype(np.uint64),
        offsets,
        doc_of[order].astype(np.int32),
        all_tfs[order].astype(np.uint16),
        chunk_ids,
        file_codes,
        lengths,
        file_ids,
    )


def _with_bounds(
    terms: Hashes,
    offsets: npt.NDArray[np.int64],
    docs: npt.NDArray[np.int32],
    tfs: npt.NDArray[np.uint16],
    chunk_ids: npt.NDArray[np.int64],
    file_codes: npt.NDArray[np.int32],
    lengths: npt.NDArray[np.int64],
    file_ids: Sequence[str],
) -> Postings:
    """The index of these CSR arrays, with the bounds and bitmaps derived from them."""
    max_tfs, min_lengths = _term_bounds(offsets, docs, tfs, lengths)
    rows, block_tfs, block_lengths = _block_bounds(offsets, docs, tfs, lengths)
    bit_rows, bits, bit_ranks = _doc_bits(offsets, docs, int(lengths.shape[0]))
    return Postings(
        terms=terms,
        offsets=offsets,
        docs=docs,
        tfs=tfs,
        chunk_ids=chunk_ids,
        file_codes=file_codes,
        lengths=lengths,
        file_ids=tuple(file_ids),
        total_length=int(lengths.sum()),
        max_tfs=max_tfs,
        min_lengths=min_lengths,
        block_rows=rows,
        block_max_tfs=block_tfs,
        block_min_lengths=block_lengths,
        bit_rows=bit_rows,
        bits=bits,
        bit_ranks=bit_ranks,
    )


def _common_rows(
    offsets: npt.NDArray[np.int64], size: int, share: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The terms in at least 1/`share` of the `size` docs, and per term its row among them (-1: none)."""
    df = np.diff(offsets)
    common = np.flatnonzero(df * share >= max(size, 1)) if size else np.zeros(0, np.int64)
    rows = np.full(df.shape[0], -1, dtype=np.int32)
    rows[common] = np.arange(common.shape[0], dtype=np.int32)
    return common, rows


def _doc_bits(
    offsets: npt.NDArray[np.int64], docs: npt.NDArray[np.int32], size: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
    """`Postings.bit_rows`, `bits` and `bit_ranks`: per term in 1/BIT_TERM_SHARE of the docs, its docs
    as flags packed 64 to a little-endian word, and a running count of its postings per block."""
    blocks = (size + 63) >> 6
    common, rows = _common_rows(offsets, size, BIT_TERM_SHARE)
    bits = np.zeros((common.shape[0], blocks), dtype=np.uint64)
    ranks = np.zeros((common.shape[0], blocks), dtype=np.int32)
    flags = np.zeros(blocks << 6, dtype=bool)
    for row, i in enumerate(common.tolist()):
        held = docs[int(offsets[i]) : int(offsets[i + 1])]
        flags[held] = True
        bits[row] = np.packbits(flags, bitorder="little").view(np.dtype("<u8"))
        flags[held] = False
        ranks[row, 1:] = np.cumsum(np.bincount(held >> 6, minlength=blocks)[:-1])
    return rows, bits, ranks


def _term_bounds(
    offsets: npt.NDArray[np.int64],
    docs: npt.NDArray[np.int32],
    tfs: npt.NDArray[np.uint16],
    lengths: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]:
    """`Postings.max_tfs` and `min_lengths`: one segmented reduction each over the postings (every
    term of a CSR built here has at least one)."""
    if docs.size == 0:
        return np.zeros(0, np.uint16), np.zeros(0, np.int64)
    starts = offsets[:-1]
    # The lengths gathered as int32 (clipped: a smaller length only loosens the bound): half the
    # temporary of one int64 per posting.
    short = np.minimum(lengths, np.iinfo(np.int32).max).astype(np.int32)
    return (
        np.maximum.reduceat(tfs, starts).astype(np.uint16),
        np.minimum.reduceat(short[docs], starts).astype(np.int64),
    )


def _block_bounds(
    offsets: npt.NDArray[np.int64],
    docs: npt.NDArray[np.int32],
    tfs: npt.NDArray[np.uint16],
    lengths: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """`Postings.block_rows`, `block_max_tfs` and `block_min_lengths`: per common term, a segmented
    reduction over its postings (ascending docs, so each block's are a run)."""
    size = int(lengths.shape[0])
    blocks = (size + (1 << BLOCK_SHIFT) - 1) >> BLOCK_SHIFT
    common, rows = _common_rows(offsets, size, BLOCK_TERM_SHARE)
    max_tfs = np.zeros((common.shape[0], blocks), dtype=np.uint16)
    min_lengths = np.zeros((common.shape[0], blocks), dtype=np.uint16)
    short = np.minimum(lengths, 0xFFFF).astype(np.uint16)
    for row, i in enumerate(common.tolist()):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        block = docs[lo:hi] >> BLOCK_SHIFT
        starts = np.flatnonzero(np.concatenate(([True], block[1:] != block[:-1])))
        max_tfs[row, block[starts]] = np.maximum.reduceat(tfs[lo:hi], starts)
        min_lengths[row, block[starts]] = np.minimum.reduceat(short[docs[lo:hi]], starts)
    return rows, max_tfs, min_lengths


def _packed_csr(
    all_terms: npt.NDArray[Any], doc_of: npt.NDArray[np.int32], all_tfs: npt.NDArray[Any]
) -> tuple[Hashes, npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.uint16]] | None:
    """The CSR arrays by one sort of values (vectorised, several times faster than an argsort and
    its gathers): each posting packed into one uint64, the top bits of its term's hash above its doc
    and tf. Exact only if the distinct terms differ in those top bits; None (the caller sorts by
    the full hash) if any two do not, or if docs and tfs leave too few bits."""
    if all_terms.size == 0 or int(doc_of.min()) < 0:
        return None
    doc_bits = max(int(doc_of.max()).bit_length(), 1)
    tf_bits = max(int(all_tfs.max()).bit_length(), 1)
    shift = doc_bits + tf_bits
    if shift > 48:
        return None
    unique = np.sort(all_terms).astype(np.uint64, copy=False)  # a value sort, then the distinct ones
    unique = unique[np.concatenate(([True], unique[1:] != unique[:-1]))]
    top = unique >> np.uint64(shift)
    if top.size > 1 and not bool(np.all(top[1:] > top[:-1])):
        return None  # two terms share their top bits
    # In place where it can be: these arrays are one element per posting.
    keys = all_terms & ~np.uint64((1 << shift) - 1)
    spread = doc_of.astype(np.uint64)
    spread <<= np.uint64(tf_bits)
    keys |= spread
    del spread
    keys |= all_tfs
    keys.sort()
    # Each term's postings start where its top bits (shifted back) would be inserted.
    offsets = np.empty(unique.size + 1, dtype=np.int64)
    offsets[:-1] = np.searchsorted(keys, top << np.uint64(shift))
    offsets[-1] = keys.size
    tfs = (keys & np.uint64((1 << tf_bits) - 1)).astype(np.uint16)
    keys >>= np.uint64(tf_bits)
    keys &= np.uint64((1 << doc_bits) - 1)
    docs = keys.astype(np.int32)
    return unique, offsets, docs, tfs


def rank(
    stores: Sequence[Postings], hashes: Hashes | Sequence[int], limit: int, allowed: Collection[str] | None = None
) -> list[Candidate]:
    """The `limit` best chunks of `stores` for the query terms `hashes` by exact Okapi BM25, best first
    (ties: lower chunk id first); only chunks of the files `allowed` if given. N, df and the average
    length are those of `stores` together. Blocking (numpy): run it off the event loop."""
    terms = sorted({int(h) for h in hashes})
    n = sum(s.live for s in stores)
    if not terms or n == 0 or limit <= 0 or (allowed is not None and not allowed):
        return []
    avgdl = max(sum(s.live_length for s in stores) / n, 1.0)
    # Per store and term: the postings (docs, tfs) left once removed docs are dropped.
    postings: list[list[tuple[npt.NDArray[np.int32], npt.NDArray[np.uint16]]]] = []
    for s in stores:
        found = []
        for t in terms:
            lo, hi = s.span(t)
            docs, tfs = s.docs[lo:hi], s.tfs[lo:hi]
            if s.removed is not None and docs.size:
                keep = ~s.removed[docs]
                docs, tfs = docs[keep], tfs[keep]
            found.append((docs, tfs))
        postings.append(found)
    df = [sum(int(p[j][0].size) for p in postings) for j in range(len(terms))]
    weight = [math.log(1.0 + (n - d + 0.5) / (d + 0.5)) * (BM25_K1 + 1) if d else 0.0 for d in df]  # idf * (k1 + 1)
    found_scores: list[npt.NDArray[np.float64]] = []
    found_ids: list[npt.NDArray[np.int64]] = []
    for store, store_postings in zip(stores, postings, strict=True):
        if all(docs.size == 0 for docs, _ in store_postings):
            continue
        norm = BM25_K1 * (1 - BM25_B + BM25_B * store.lengths / avgdl)
        scores = np.zeros(store.size, dtype=np.float64)
        for (docs, tfs), w in zip(store_postings, weight, strict=True):
            if docs.size == 0:
                continue
            tf = tfs.astype(np.float64)
            scores[docs] += w * tf / (tf + norm[docs])  # a term's docs are distinct
        matched = np.flatnonzero(scores > 0)
        if allowed is not None:
            wanted = np.array([f in allowed for f in store.file_ids], dtype=bool)
            matched = matched[wanted[store.file_codes[matched]]] if wanted.size else matched[:0]
        found_scores.append(scores[matched])
        found_ids.append(store.chunk_ids[matched])
    if not found_scores:
        return []
    scores_all = np.concatenate(found_scores)
    ids_all = np.concatenate(found_ids)
    if scores_all.shape[0] > limit:
        # Keep every chunk scoring at least the k-th score (ties included), then order exactly.
        kth = -np.partition(-scores_all, limit - 1)[limit - 1]
        keep = scores_all >= kth
        scores_all, ids_all = scores_all[keep], ids_all[keep]
    order = np.lexsort((ids_all, -scores_all))[:limit]
    return [Candidate(int(ids_all[i]), float(scores_all[i])) for i in order]
