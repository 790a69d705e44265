"""Reranking by late interaction over all-MiniLM-L6-v2's contextual token vectors.

MiniLM computes a contextual vector for every word piece of a text before mean-pooling them into the
text's embedding (`loom.retrieval.minilm`). At ingestion, stores embedded by MiniLM keep a compact
form of each chunk's piece vectors (`compact`): [CLS]/[SEP], punctuation and whole stop words dropped,
the rest unit-length, pooled by k-means into at most `MAX_VECTORS` centroids, each stored as int8 with
its own scale (`late_tokens`, migration 0012: about 12 KB a chunk). A query's piece vectors come from
the same forward pass that embeds it, so reranking runs no model per candidate: a candidate's
late-interaction score is MaxSim (ColBERT's): each content piece of the query takes its best cosine
among the chunk's vectors, averaged over the query's pieces. The final score is
`FUSED_WEIGHT * fused + (1 - FUSED_WEIGHT) * maxsim`, both 0..1.

Measured on SciFact (`bench/rerank_research.py`, `bench/retrieval_quality.py --embedder minilm`):
reranking the 50 best fused candidates takes hybrid nDCG@10 from 0.718 to 0.743 over fusion at vector
weight 0.3 (where FUSED_WEIGHT was tuned), but only from 0.736 to 0.742 over the shipped minilm fusion
(weight 0.6, `search.fusion_for`); SQLite and PostgreSQL alike; p50 about 4 ms added per search. Chunks stored without token vectors (stores embedded by another model, or chunks written
before 0012) are not reranked: a search whose candidates miss any keeps fusion's order and scores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from loom.retrieval.embedding import Embedder, Vectors
from loom.retrieval.index import STOPWORDS
from loom.retrieval.minilm import MiniLMEmbedder, MiniLMRuntime
from loom.retrieval.minilm_graph import HIDDEN

# `ranking_options.ranker` values: vector store search's, and file_search's in runs (Assistants API).
RANKERS = ("auto", "default-2024-11-15", "default_2024_08_21", "none")
RERANK_DEPTH = 50  # fused candidates re-scored per search (more when more results are asked for)
# k-means centroids kept per chunk. SciFact nDCG@10 at FUSED_WEIGHT 0.3 (`bench/rerank_research.py`): 16 0.737,
# 24 0.735, 32 0.743, 48 0.734, every piece unpooled 0.726: within about 0.008 of one another, which is this
# benchmark's noise; pooling never lost to keeping every piece (and stores 5x less).
MAX_VECTORS = 32
KMEANS_ITERATIONS = 6
FUSED_WEIGHT = 0.3  # measured on SciFact: 0.2-0.4 within 0.005 of each other; late interaction alone 0.721
FORMAT = 1  # first byte of a `late_tokens` blob

Floats = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def wants_rerank(ranker: str) -> bool:
    return ranker != "none"


@dataclass(frozen=True, slots=True)
class _Vocabulary:
    """Per word piece id: carries content (letters or digits, not a special token), is a stop word,
    continues a word (`##`)."""

    content: npt.NDArray[np.bool_]
    stop: npt.NDArray[np.bool_]
    continues: npt.NDArray[np.bool_]


@cache
def _vocabulary(runtime: MiniLMRuntime) -> _Vocabulary:
    vocab = runtime.tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    content = np.zeros(size, dtype=bool)
    stop = np.zeros(size, dtype=bool)
    continues = np.zeros(size, dtype=bool)
    for piece, i in vocab.items():
        bare = piece[2:] if piece.startswith("##") else piece
        special = piece.startswith("[") and piece.endswith("]")
        content[i] = not special and any(ch.isalnum() for ch in bare)
        stop[i] = piece in STOPWORDS
        continues[i] = piece.startswith("##")
    return _Vocabulary(content, stop, continues)


def content_rows(vocab: _Vocabulary, ids: Ids) -> npt.NDArray[np.bool_]:
    """Which pieces carry content: not special, not punctuation, not a stop word standing alone (a stop
    word followed by `##` pieces begins a longer word and is kept)."""
    followed = np.zeros(len(ids), dtype=bool)
    followed[:-1] = vocab.continues[ids[1:]]
    keep: npt.NDArray[np.bool_] = vocab.content[ids] & ~(vocab.stop[ids] & ~followed)
    return keep


def _unit(x: Floats) -> Floats:
    out: Floats = (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32, copy=False)
    return out


# OpenBLAS splits a product across threads above about 2^18 multiply-adds; on 2 cores already busy with
# ONNX Runtime's runs (and other work) its threads spin and wait: measured on this machine, k-means of one
# 200-piece chunk took 99 ms with threaded products against 4 ms with single-threaded ones. Every product
# here is cut into blocks below that size, so it runs on the calling thread.
_BLAS_SINGLE = 1 << 18


def _products(a: Floats, b: Floats) -> Floats:
    """`a @ b.T`, in row blocks of `a` small enough for OpenBLAS to compute on the calling thread."""
    rows = max(1, _BLAS_SINGLE // max(1, a.shape[1] * b.shape[0]))
    if len(a) <= rows:
        out: Floats = a @ b.T
        return out
    return np.concatenate([a[i : i + rows] @ b.T for i in range(0, len(a), rows)])


def _kmeans(x: Floats, k: int) -> Floats:
    """`k` unit centroids of unit rows `x` (spherical k-means, started from evenly spaced rows so the
    result depends on the text only)."""
    if len(x) <= k:
        return x
    centroids = x[np.linspace(0, len(x) - 1, k).astype(np.int64)]
    for _ in range(KMEANS_ITERATIONS):
        assign = np.argmax(_products(x, centroids), axis=1)
        order = np.argsort(assign, kind="stable")
        chosen, starts = np.unique(assign[order], return_index=True)
        sums = centroids.copy()  # a centroid nothing chose stays where it was
        sums[chosen] = np.add.reduceat(x[order], starts, axis=0)
        centroids = _unit(sums)
    return centroids


def compact(vocab: _Vocabulary, ids: Ids, hidden: Floats) -> bytes:
    """A chunk's `late_tokens` blob: format byte, count (uint16), per vector a float32 scale, then the
    int8 vectors (count x 384)."""
    rows = _unit(hidden[content_rows(vocab, ids)].astype(np.float32, copy=False))
    vectors: Floats = _kmeans(rows, MAX_VECTORS) if len(rows) else np.zeros((0, HIDDEN), dtype=np.float32)
    scale: Floats = (np.maximum(np.abs(vectors).max(axis=1), 1e-12) / 127.0).astype(np.float32)
    q: npt.NDArray[np.int8] = np.round(vectors / scale[:, None]).astype(np.int8)
    header = bytes([FORMAT]) + len(q).to_bytes(2, "little")
    return header + scale.tobytes() + q.tobytes()


def expand(blob: bytes) -> Floats:
    """The vectors of a `late_tokens` blob (count x 384, float32)."""
    if not blob or blob[0] != FORMAT:
        raise ValueError("unknown late_tokens format")
    n = int.from_bytes(blob[1:3], "little")
    scale = np.frombuffer(blob, dtype=np.float32, count=n, offset=3)
    q = np.frombuffer(blob, dtype=np.int8, count=n * HIDDEN, offset=3 + 4 * n).reshape(n, HIDDEN)
    out: Floats = q.astype(np.float32) * scale[:, None]
    return out


def query_vectors(vocab: _Vocabulary, ids: Ids, hidden: Floats) -> Floats:
    """A query's content pieces, unit-length (all its pieces if none carries content)."""
    keep = content_rows(vocab, ids)
    return _unit(hidden[keep] if keep.any() else hidden)


def maxsim(query: Floats, chunks: Sequence[Floats]) -> Floats:
    """Per chunk: the query pieces' best cosines among the chunk's vectors, averaged, clipped to 0..1."""
    out = np.zeros(len(chunks), dtype=np.float32)
    if not len(query) or not chunks:
        return out
    for i, c in enumerate(chunks):
        if len(c):
            out[i] = _products(query, c).max(axis=1).mean()
    clipped: Floats = np.clip(out, 0.0, 1.0)
    return clipped


def combine(fused: Floats, late: Floats) -> Floats:
    out: Floats = np.clip(FUSED_WEIGHT * fused + (1.0 - FUSED_WEIGHT) * late, 0.0, 1.0)
    return out


def _runtime(embedder: Embedder) -> MiniLMRuntime | None:
    return embedder.runtime() if isinstance(embedder, MiniLMEmbedder) else None


def keeps_tokens(embedder: Embedder) -> bool:
    """Whether chunks this embedder embeds get token vectors (MiniLM's, quantised or not)."""
    return isinstance(embedder, MiniLMEmbedder)


async def embed_with_tokens(embedder: Embedder, texts: Sequence[str]) -> tuple[Vectors, list[bytes | None]]:
    """Chunk vectors, and each chunk's `late_tokens` blob from the same forward pass (None when the
    embedder has no token vectors)."""
    if not isinstance(embedder, MiniLMEmbedder):
        return await embedder.embed(texts), [None] * len(texts)
    blobs: list[bytes | None] = [None] * len(texts)

    def run() -> Vectors:
        runtime = embedder.runtime()
        vocab = _vocabulary(runtime)

        def keep(row: int, ids: Ids, hidden: Floats) -> None:  # in the runtime's worker threads
            blobs[row] = compact(vocab, ids, hidden)

        return runtime.encode(texts, tokens=keep)

    vectors = await asyncio.to_thread(run)
    return vectors, blobs


async def embed_queries(embedder: Embedder, queries: Sequence[str]) -> tuple[Vectors, list[Floats] | None]:
    """Query vectors, and each query's content piece vectors (same pass) when the embedder has them."""
    if not isinstance(embedder, MiniLMEmbedder):
        return await embedder.embed(queries), None
    pieces: list[Floats] = [np.zeros((0, HIDDEN), dtype=np.float32)] * len(queries)

    def run() -> Vectors:
        runtime = embedder.runtime()
        vocab = _vocabulary(runtime)

        def keep(row: int, ids: Ids, hidden: Floats) -> None:
            pieces[row] = query_vectors(vocab, ids, hidden)

        return runtime.encode(queries, tokens=keep)

    vectors = await asyncio.to_thread(run)
    return vectors, pieces


def rescore(queries: Sequence[Floats], fused: Sequence[float], blobs: Sequence[bytes]) -> Floats:
    """Final scores (0..1) of candidates with fused scores `fused` and token blobs `blobs`: the best
    late-interaction score over the queries, mixed with the fused score."""
    chunks = [expand(b) for b in blobs]
    late = np.zeros(len(blobs), dtype=np.float32)
    for q in queries:
        late = np.maximum(late, maxsim(q, chunks))
    return combine(np.asarray(fused, dtype=np.float32), late)
