"""Search glue between the vector store API (and file search in runs) and the retrieval library.

The API's `POST /vector_stores/{id}/search` body becomes a `SearchRequest`; runs search only live
stores (`live_store_ids`) once their files finished ingesting (`wait_ingested`, bounded).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from loom.retrieval.embedding import Embedder
from loom.retrieval.filters import Filter, parse_filter
from loom.retrieval.index import STOPWORDS, ChunkIndex
from loom.retrieval.search import SearchResult, search
from loom.schemas.common import parse
from loom.schemas.vector_stores import VectorStoreSearch
from loom.services.vector_store_rows import is_expired
from loom.store import tables
from loom.store.collections import vector_stores as stores
from loom.store.db import Database


def rewrite_query(query: str) -> str:
    """`rewrite_query: true`: a deterministic rewrite for search engines (documented behaviour of Loom).

    Lower-cases, drops punctuation and English stop words (keeping the query if nothing would remain).
    OpenAI rewrote with a model; a keyword-and-vector index gains nothing from a chattier query.
    """
    words = re.findall(r"[^\W_]+", query.lower())
    kept = [w for w in words if w not in STOPWORDS]
    return " ".join(kept or words) or query


@dataclass(frozen=True)
class SearchRequest:
    """A validated `POST /vector_stores/{id}/search` body."""

    queries: list[str]
    filters: Filter | None
    max_num_results: int
    score_threshold: float
    ranker: str = "auto"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> SearchRequest:
        req = parse(VectorStoreSearch, body)
        flt = parse_filter(req.filters) if req.filters is not None else None
        queries = [req.query] if isinstance(req.query, str) else list(req.query)
        if req.rewrite_query:
            queries = [rewrite_query(q) for q in queries]
        threshold = req.ranking_options.score_threshold if req.ranking_options else None
        ranker = (req.ranking_options.ranker if req.ranking_options else None) or "auto"
        return cls(queries, flt, req.max_num_results or 10, threshold or 0.0, ranker)

    async def run(self, index: ChunkIndex, embedder: Embedder, store_ids: Sequence[str]) -> list[SearchResult]:
        return await search(
            index,
            embedder,
            list(store_ids),
            self.queries,
            max_num_results=self.max_num_results,
            filters=self.filters,
            score_threshold=self.score_threshold,
            ranker=self.ranker,
        )

    def page(self, results: Sequence[SearchResult]) -> dict[str, Any]:
        return {
            "object": "vector_store.search_results.page",
            "search_query": self.queries,
            "data": [r.to_wire() for r in results],
            "has_more": False,
            "next_page": None,
        }


async def live_store_ids(db: Database, project: str, store_ids: Sequence[str]) -> list[str]:
    """The stores of `store_ids` that exist and have not expired, each once, in order."""
    live: list[str] = []
    async with db.read() as conn:
        for store_id in dict.fromkeys(store_ids):
            store = await stores.get(conn, project, store_id)
            if store is not None and not is_expired(store):
                live.append(store_id)
    return live


async def wait_ingested(db: Database, store_ids: Sequence[str], timeout_s: float, wake: Callable[[], None]) -> None:
    """Until no file of the stores is `in_progress`, or `timeout_s`; `wake` nudges the ingestion worker."""
    t = tables.vector_store_files
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        async with db.read() as conn:
            pending = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        t.c.vector_store_id.in_(list(store_ids)), t.c.status == "in_progress"
                    )
                )
            ).scalar_one()
        if not pending:
            return
        wake()
        await asyncio.sleep(0.2)
