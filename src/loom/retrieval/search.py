"""Hybrid search: vector and keyword candidates fused into one 0..1 score, then filtered and cut.

Fusion (measured on SciFact, see bench/retrieval_quality.py): `linear` combines the cosine
similarity (clipped to 0..1) with the BM25 score divided by the best BM25 score of the query;
`rrf` is weighted reciprocal-rank fusion scaled so that rank 1 in both lists scores 1.0.

Then, unless `ranker` is `none`, the best `RERANK_DEPTH` fused candidates are re-scored by late
interaction over their stored token vectors (`loom.retrieval.rerank`; stores embedded by MiniLM), and
`score_threshold` applies to those final scores. Candidates without token vectors keep fusion's order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from loom.errors import InvalidRequest
from loom.retrieval.embedding import Embedder
from loom.retrieval.filters import Filter, matches, parse_filter
from loom.retrieval.index import Candidate, ChunkIndex, StoredChunk, query_terms
from loom.retrieval.rerank import RANKERS, RERANK_DEPTH, Floats, embed_queries, keeps_tokens, rescore, wants_rerank

SearchMode = Literal["hybrid", "vector", "keyword"]


@dataclass(frozen=True, slots=True)
class Fusion:
    method: Literal["linear", "rrf"] = "linear"
    vector_weight: float = 0.3  # keyword weight is 1 - vector_weight (0.3 measured best on SciFact)
    rrf_k: int = 60
    candidates: int = 100  # per list, per query


DEFAULT_FUSION = Fusion()

# Linear fusion's vector weight for the embedders whose best weight is not the default's, each the best of
# the sweep that bench/retrieval_quality.py prints (SciFact's test queries: the only labelled set we have,
# so the weight is tuned on the queries it is measured on). A store's searches use its own embedder's.
VECTOR_WEIGHTS: dict[str, float] = {"all-MiniLM-L6-v2": 0.6}


def fusion_for(embedder_name: str) -> Fusion:
    """The fusion for searches embedded by `embedder_name` (the store's embedder)."""
    weight = VECTOR_WEIGHTS.get(embedder_name)
    return DEFAULT_FUSION if weight is None else Fusion(vector_weight=weight)


@dataclass(frozen=True, slots=True)
class SearchResult:
    vector_store_id: str
    file_id: str
    filename: str
    score: float
    text: str
    chunk_id: int
    chunk_index: int
    start: int
    end: int
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """One item of `vector_store.search_results.page` data."""
        return {
            "file_id": self.file_id,
            "filename": self.filename,
            "score": self.score,
            "attributes": self.attributes,
            "content": [{"type": "text", "text": self.text}],
        }


def _clip(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def fuse(
    vector: Sequence[Candidate], keyword: Sequence[Candidate], mode: SearchMode, fusion: Fusion
) -> dict[int, float]:
    """Scores in 0..1 for one query's candidates."""
    vec = {c.chunk_id: _clip(c.score) for c in vector}
    best = max((c.score for c in keyword), default=0.0)
    kw = {c.chunk_id: (_clip(c.score / best) if best > 0 else 0.0) for c in keyword}
    if mode == "vector":
        return vec
    if mode == "keyword":
        return kw
    wv = _clip(fusion.vector_weight)
    wk = 1.0 - wv
    if fusion.method == "rrf":
        scale = 1.0 / (fusion.rrf_k + 1)
        out: dict[int, float] = {}
        for weight, ranked in ((wv, vector), (wk, keyword)):
            for rank, c in enumerate(ranked, start=1):
                out[c.chunk_id] = out.get(c.chunk_id, 0.0) + weight / (fusion.rrf_k + rank) / scale
        return {k: _clip(v) for k, v in out.items()}
    return {cid: _clip(wv * vec.get(cid, 0.0) + wk * kw.get(cid, 0.0)) for cid in vec.keys() | kw.keys()}


def _validate(max_num_results: int, score_threshold: float, mode: str, ranker: str) -> None:
    if not 1 <= max_num_results <= 50:
        raise InvalidRequest(
            f"Invalid 'max_num_results': expected a value between 1 and 50, but got {max_num_results} instead.",
            param="max_num_results",
            code="invalid_value",
        )
    if not 0.0 <= score_threshold <= 1.0:
        raise InvalidRequest(
            "Invalid 'ranking_options.score_threshold': expected a value between 0 and 1, "
            f"but got {score_threshold} instead.",
            param="ranking_options.score_threshold",
            code="invalid_value",
        )
    if mode not in ("hybrid", "vector", "keyword"):
        raise ValueError(f"unknown search mode {mode!r}")
    if ranker not in RANKERS:
        raise InvalidRequest(
            f"Invalid 'ranking_options.ranker': expected one of {', '.join(RANKERS)}, but got {ranker!r} instead.",
            param="ranking_options.ranker",
            code="invalid_value",
        )


async def search(
    index: ChunkIndex,
    embedder: Embedder,
    vector_store_ids: Sequence[str],
    query: str | Sequence[str],
    *,
    max_num_results: int = 10,
    filters: Filter | Mapping[str, Any] | None = None,
    score_threshold: float = 0.0,
    mode: SearchMode = "hybrid",
    fusion: Fusion | None = None,
    ranker: str = "auto",
) -> list[SearchResult]:
    """Search one or more vector stores with one or more queries; best chunks first, scores 0..1.

    Several queries: each is searched on its own and a chunk keeps its best score over them.
    `fusion`: by default the one tuned for `embedder` (`fusion_for`), the store's own embedder.
    `filters` is OpenAI's ComparisonFilter/CompoundFilter (raw dict or parsed), over file attributes.
    `ranker` `none` keeps fusion's order; the others rerank (`loom.retrieval.rerank`).
    """
    _validate(max_num_results, score_threshold, mode, ranker)
    return await run_search(
        index,
        embedder,
        vector_store_ids,
        query,
        max_num_results=max_num_results,
        filters=filters,
        score_threshold=score_threshold,
        mode=mode,
        fusion=fusion,
        ranker=ranker,
    )


async def run_search(
    index: ChunkIndex,
    embedder: Embedder,
    vector_store_ids: Sequence[str],
    query: str | Sequence[str],
    *,
    max_num_results: int = 10,
    filters: Filter | Mapping[str, Any] | None = None,
    score_threshold: float = 0.0,
    mode: SearchMode = "hybrid",
    fusion: Fusion | None = None,
    ranker: str = "auto",
) -> list[SearchResult]:
    """`search` without the API's request limits (benchmarks ask for 100 results)."""
    queries = [query] if isinstance(query, str) else list(query)
    queries = [q for q in queries if q.strip()]
    if not queries or not vector_store_ids:
        return []
    allowed: set[str] | None = None
    if filters is not None:
        flt = parse_filter(filters) if isinstance(filters, Mapping) else filters
        files = await index.list_files(vector_store_ids)
        allowed = {f.file_id for f in files if matches(flt, f.attributes)}
        if not allowed:
            return []
    if fusion is None:
        fusion = fusion_for(embedder.name)
    limit = max(fusion.candidates, max_num_results)
    # Keyword ranking needs no embedding: it starts first and runs (in a thread) while the queries are
    # embedded and the vector lists fetched (other connections, or a thread): the slower of the two sides
    # sets the latency, not their sum.
    keyword = [
        asyncio.ensure_future(index.keyword_candidates(vector_store_ids, query_terms(q), limit, allowed))
        for q in (queries if mode != "vector" else ())
    ]
    try:
        lists = await _vector_lists(index, embedder, vector_store_ids, queries, limit, allowed, mode, ranker)
        keyword_lists = [await task for task in keyword]
    finally:  # on an error: stop what still runs, and take the failures of what ended (none goes unread)
        for task in keyword:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()
    vector_lists, pieces = lists
    best: dict[int, float] = {}
    for i in range(len(queries)):
        vec = vector_lists[i] if vector_lists else []
        kw = keyword_lists[i] if keyword_lists else []
        for cid, score in fuse(vec, kw, mode, fusion).items():
            if score > best.get(cid, -1.0):
                best[cid] = score

    ranked = sorted(((cid, s) for cid, s in best.items() if s > 0.0), key=lambda item: (-item[1], item[0]))
    fetched: Mapping[int, StoredChunk] | None = None
    if pieces is not None and ranked:
        # The candidates' token vectors and rows in two concurrent queries, not one after the other: the
        # rows of the few candidates the reranker drops cost less than a round trip.
        top = ranked[: max(RERANK_DEPTH, max_num_results)]
        ids = [cid for cid, _ in top]
        blobs, fetched = await asyncio.gather(index.late_tokens(ids), index.get_chunks(ids))
        ranked = await _rerank(pieces, top, blobs)
    ranked = [(cid, s) for cid, s in ranked if s >= score_threshold][:max_num_results]
    chunks = fetched if fetched is not None else await index.get_chunks([cid for cid, _ in ranked])
    return _results(ranked, chunks)


def _results(ranked: Sequence[tuple[int, float]], chunks: Mapping[int, StoredChunk]) -> list[SearchResult]:
    """The ranked chunks as results, less any deleted between the ranking and the fetch."""
    results: list[SearchResult] = []
    for cid, score in ranked:
        c = chunks.get(cid)
        if c is None:  # deleted between the two queries
            continue
        results.append(
            SearchResult(
                c.vector_store_id,
                c.file_id,
                c.filename,
                round(score, 6),
                c.text,
                c.chunk_id,
                c.chunk_index,
                c.start,
                c.end,
                c.attributes,
            )
        )
    return results


async def _vector_lists(
    index: ChunkIndex,
    embedder: Embedder,
    vector_store_ids: Sequence[str],
    queries: Sequence[str],
    limit: int,
    allowed: set[str] | None,
    mode: SearchMode,
    ranker: str,
) -> tuple[list[list[Candidate]], list[Floats] | None]:
    """Each query's vector candidates (none in keyword mode), fetched concurrently, and the queries'
    piece vectors for the reranker when it will run (from the pass that embeds them)."""
    pieces: list[Floats] | None = None
    if wants_rerank(ranker) and keeps_tokens(embedder):
        vectors, pieces = await embed_queries(embedder, queries)
    elif mode == "keyword":
        return [], None
    else:
        vectors = await embedder.embed(queries)
    if mode == "keyword":
        return [], pieces
    found = await asyncio.gather(
        *(index.vector_candidates(vector_store_ids, vectors[i], limit, allowed) for i in range(len(queries)))
    )
    return list(found), pieces


async def _rerank(
    pieces: Sequence[Floats], top: list[tuple[int, float]], blobs: Mapping[int, bytes]
) -> list[tuple[int, float]]:
    """`top` (fused, best first) re-scored by late interaction over their token vectors `blobs`, best
    first; unchanged when any candidate has none (a store embedded by another model, or chunks from
    before migration 0012): scores of two kinds are never ranked against each other."""
    if len(blobs) < len(top):
        return top
    final = await asyncio.to_thread(rescore, pieces, [s for _, s in top], [blobs[cid] for cid, _ in top])
    rescored = [(cid, float(score)) for (cid, _), score in zip(top, final, strict=True)]
    rescored.sort(key=lambda item: (-item[1], item[0]))
    return rescored
