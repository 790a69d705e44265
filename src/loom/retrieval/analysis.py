"""Keyword analysis for BM25: a text's words into terms, and a chunk's terms into its stored keyword columns.

The analyzer is close to SQLite FTS5's `porter unicode61 remove_diacritics 2`: words are runs of
letters and digits (`[^\\W_]+`), lower-cased, diacritics removed (NFKD, combining marks dropped),
stemmed with Snowball's English stemmer (PyStemmer). No stop words on the document side: queries
drop Loom's own (`index.query_terms`), and a stop list would shorten |D| and skew length
normalisation.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import Stemmer

TF_MAX = 0xFFFF  # term frequencies are stored as uint16, saturating

TERM_DTYPE = np.dtype("<u8")
TF_DTYPE = np.dtype("<u2")

_WORD = re.compile(r"[^\W_]+")
_STEMMER = Stemmer.Stemmer("english")
_CACHE_SIZE = 200_000
# A lower-cased word -> the hash of its term (folded, stemmed); cleared when full (bounded memory).
_term_cache: dict[str, int] = {}

Hashes = npt.NDArray[np.uint64]


def _fold(word: str) -> list[str]:
    """Diacritics removed (NFKD, combining marks dropped); compatibility decomposition may split a
    word (a ligature, a fraction), so it is re-tokenised."""
    decomposed = unicodedata.normalize("NFKD", word)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c)).lower()
    return _WORD.findall(kept)


def _hash(term: str) -> int:
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")


def _term_hashes(word: str) -> list[int]:
    """The hashes of one lower-cased word's terms (one, except where folding splits it)."""
    if word.isascii():
        return [_hash(_STEMMER.stemWord(word))]
    return [_hash(_STEMMER.stemWord(w)) for w in _fold(word)]


def _word_hash(word: str) -> int | list[int]:
    found = _term_cache.get(word)
    if found is not None:
        return found
    hashes = _term_hashes(word)
    value: int | list[int] = hashes[0] if len(hashes) == 1 else hashes
    if isinstance(value, int):
        if len(_term_cache) >= _CACHE_SIZE:
            _term_cache.clear()
        _term_cache[word] = value
    return value


def analyze(text: str) -> list[str]:
    """The terms of a text, in order (for tests and tools: indexing goes through `encode`)."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        parts = [word] if word.isascii() else _fold(word)
        terms.extend(_STEMMER.stemWord(w) for w in parts)
    return terms


def _hashes_of(text: str) -> list[int]:
    out: list[int] = []
    for word in _WORD.findall(text.lower()):
        h = _word_hash(word)
        if isinstance(h, int):
            out.append(h)
        else:
            out.extend(h)
    return out


@dataclass(frozen=True, slots=True)
class Encoded:
    """A chunk's keywords: its distinct terms' hashes (sorted little-endian uint64), their term
    frequencies (little-endian uint16, same order, saturating at TF_MAX), and its length in terms."""

    terms: bytes
    tfs: bytes
    length: int


def encode(text: str) -> Encoded:
    """Analyse a chunk's text into its keyword columns.

    A term is identified by the first 8 bytes of the BLAKE2b digest of its stem (stable across
    processes and versions, unlike `hash`). Two terms colliding would be counted as one: a query for
    either would match chunks holding the other, with a shared document frequency. With a store's
    vocabulary of V distinct terms the chance that any two collide is about V^2 / 2^65 (5e-9 at a
    million terms), and a collision only perturbs the ranking of queries using those two terms.
    """
    hashes = _hashes_of(text)
    if not hashes:
        return Encoded(b"", b"", 0)
    counts = Counter(hashes)
    terms = np.fromiter(counts.keys(), dtype=np.uint64, count=len(counts))
    tfs = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    order = np.argsort(terms)
    return Encoded(
        terms[order].astype(TERM_DTYPE).tobytes(),
        np.minimum(tfs[order], TF_MAX).astype(TF_DTYPE).tobytes(),
        len(hashes),
    )


def query_hashes(words: Iterable[str]) -> Hashes:
    """The distinct hashes (sorted) of a query's words, analysed as documents are."""
    found: set[int] = set()
    for word in words:
        found.update(_hashes_of(word))
    return np.array(sorted(found), dtype=np.uint64)
