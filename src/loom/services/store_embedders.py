"""Which embedder each vector store uses: bound by its first ingestion, then kept for good.

A store's searches and later ingestion use the model its vectors came from (`vector_stores.embedder`,
migration 0009), so changing `LOOM_EMBEDDING_PROVIDER` never mixes two models' vectors in one store:
stores made before keep theirs, new ones take the new default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom.retrieval.embedding import Embedder, Embedders
from loom.retrieval.index import ChunkIndex
from loom.retrieval.rerank import keeps_tokens, wants_rerank
from loom.retrieval.search import SearchResult, search
from loom.store import tables
from loom.store.db import Database


async def store_embedder_names(conn: AsyncConnection, store_ids: Sequence[str]) -> dict[str, str | None]:
    t = tables.vector_stores
    rows = await conn.execute(sa.select(t.c.id, t.c.embedder).where(t.c.id.in_(list(store_ids))))
    return {r[0]: r[1] for r in rows}


async def ingest_embedder(db: Database, embedders: Embedders, store_id: str) -> Embedder:
    """The store's embedder; a store with no vector yet is bound to the default now (once, atomically)."""
    t = tables.vector_stores
    async with db.write() as conn:
        await conn.execute(
            sa.update(t).where(t.c.id == store_id, t.c.embedder.is_(None)).values(embedder=embedders.default.name)
        )
        name = (await conn.execute(sa.select(t.c.embedder).where(t.c.id == store_id))).scalar()
    return embedders.for_name(name)


async def search_stores(
    db: Database, index: ChunkIndex, embedders: Embedders, store_ids: Sequence[str], queries: list[str], **kw: Any
) -> list[SearchResult]:
    """`search` over stores that may have different embedders: each group with its own, best scores first
    (unreranked when only some groups could be reranked: their scores are then all fusion's)."""
    async with db.read() as conn:
        names = await store_embedder_names(conn, store_ids)
    groups: dict[str, tuple[Embedder, list[str]]] = {}
    for store_id in store_ids:
        embedder = embedders.for_name(names.get(store_id))
        groups.setdefault(embedder.name, (embedder, []))[1].append(store_id)
    reranked = {keeps_tokens(embedder) for embedder, _ids in groups.values()}
    if len(reranked) > 1 and wants_rerank(str(kw.get("ranker", "auto"))):
        # One group's scores would be the reranker's, another's fusion's: two kinds of score never ranked
        # against each other. All are ranked by fusion (the reranker's ranking only within one group).
        kw = {**kw, "ranker": "none"}
    results: list[SearchResult] = []
    for embedder, ids in groups.values():
        results.extend(await search(index, embedder, ids, queries, **kw))
    if len(groups) > 1:
        results.sort(key=lambda r: r.score, reverse=True)
        results = results[: int(kw.get("max_num_results", 10))]
    return results
