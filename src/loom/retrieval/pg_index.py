"""PostgreSQL index: pgvector HNSW (cosine) for vectors, tsvector + GIN with ts_rank_cd for keywords.

Vectors travel as pgvector's text form, cast in SQL, so the index needs no codec registered on the
application's engine. The column is dimension-less; each embedding size has a partial HNSW index
(see `schema.hnsw_index_statement`), and queries cast to that size so the planner can use it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom.retrieval.chunking import Chunk
from loom.retrieval.embedding import Vectors
from loom.retrieval.index import Attributes, Candidate, FileEntry, StoredChunk
from loom.retrieval.schema import DEFAULT_DIMENSIONS, create_schema, hnsw_index_statement
from loom.retrieval.sqlite_index import _stored


def vector_literal(vector: Any) -> str:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    return "[" + ",".join(map(repr, arr.tolist())) + "]"


_CHUNK_COLUMNS = (
    "c.id, c.vector_store_id, c.file_id, f.filename, c.chunk_index, c.start_offset, c.end_offset, c.text, "
    "f.attributes FROM retrieval_chunks c JOIN retrieval_files f "
    "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id"
)


class PostgresChunkIndex:
    def __init__(self, engine: AsyncEngine, dimensions: int = DEFAULT_DIMENSIONS, ef_search: int = 100) -> None:
        self._engine = engine
        self._dims = int(dimensions)
        self._ef_search = int(ef_search)

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await create_schema(conn, self._dims)

    async def ensure_vector_index(self) -> None:
        """The HNSW index for this embedder's size (the migration creates the default size only)."""
        async with self._engine.begin() as conn:
            await conn.execute(text(hnsw_index_statement(self._dims)))

    async def put_file(
        self, vector_store_id: str, file_id: str, filename: str, attributes: Attributes | None = None
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO retrieval_files (vector_store_id, file_id, filename, attributes) "
                    "VALUES (:vs, :f, :name, CAST(:attrs AS jsonb)) ON CONFLICT (vector_store_id, file_id) "
                    "DO UPDATE SET filename = excluded.filename, attributes = excluded.attributes"
                ),
                {"vs": vector_store_id, "f": file_id, "name": filename, "attrs": json.dumps(attributes or {})},
            )

    async def set_attributes(self, vector_store_id: str, file_id: str, attributes: Attributes | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE retrieval_files SET attributes = CAST(:a AS jsonb) "
                    "WHERE vector_store_id = :vs AND file_id = :f"
                ),
                {"a": json.dumps(attributes or {}), "vs": vector_store_id, "f": file_id},
            )

    async def add_chunks(self, vector_store_id: str, file_id: str, chunks: Sequence[Chunk], vectors: Vectors) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        if not chunks:
            return
        dims = int(np.asarray(vectors).shape[1])
        rows = [
            {
                "vs": vector_store_id,
                "f": file_id,
                "i": c.index,
                "s": c.start,
                "e": c.end,
                "t": c.tokens,
                # PostgreSQL text cannot hold NUL; parsers strip it, this guards direct callers.
                "text": c.text.replace("\x00", ""),
                "emb": vector_literal(v),
                "d": dims,
            }
            for c, v in zip(chunks, vectors, strict=True)
        ]
        async with self._engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, "
                    "end_offset, token_count, text, embedding, embedding_dims) "
                    "VALUES (:vs, :f, :i, :s, :e, :t, :text, CAST(CAST(:emb AS text) AS vector), :d)"
                ),
                rows,
            )

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs AND file_id = :f"),
                {"vs": vector_store_id, "f": file_id},
            )
            await conn.execute(
                text("DELETE FROM retrieval_files WHERE vector_store_id = :vs AND file_id = :f"),
                {"vs": vector_store_id, "f": file_id},
            )
        return int(result.rowcount or 0)

    async def delete_store(self, vector_store_id: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs"), {"vs": vector_store_id}
            )
            await conn.execute(text("DELETE FROM retrieval_files WHERE vector_store_id = :vs"), {"vs": vector_store_id})
        return int(result.rowcount or 0)

    async def list_files(self, vector_store_ids: Sequence[str]) -> list[FileEntry]:
        async with self._engine.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT vector_store_id, file_id, filename, attributes FROM retrieval_files "
                    "WHERE vector_store_id = ANY(:vs)"
                ),
                {"vs": list(vector_store_ids)},
            )
            return [FileEntry(r[0], r[1], r[2], _json(r[3])) for r in result]

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[StoredChunk]:
        async with self._engine.connect() as conn:
            result = await conn.execute(
                text(
                    f"SELECT {_CHUNK_COLUMNS} WHERE c.vector_store_id = :vs AND c.file_id = :f ORDER BY c.chunk_index"
                ),
                {"vs": vector_store_id, "f": file_id},
            )
            return [_stored(r) for r in result]

    async def _exact(self, conn: AsyncConnection, params: dict[str, Any], with_files: bool) -> list[Candidate]:
        # A different ORDER BY expression than the HNSW index: the planner does an exact scan,
        # narrowed by the (vector_store_id, file_id) b-tree.
        sql = (
            "SELECT id, 1 - (embedding <=> CAST(CAST(:q AS text) AS vector)) AS score FROM retrieval_chunks "
            "WHERE embedding_dims = :d AND vector_store_id = ANY(:vs)"
        )
        if with_files:
            sql += " AND file_id = ANY(:files)"
        sql += " ORDER BY embedding <=> CAST(CAST(:q AS text) AS vector) LIMIT :k"
        result = await conn.execute(text(sql), params)
        return [Candidate(int(r[0]), float(r[1])) for r in result]

    async def vector_candidates(
        self,
        vector_store_ids: Sequence[str],
        vector: Vectors,
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        dims = int(np.asarray(vector).size)
        params: dict[str, Any] = {"q": vector_literal(vector), "d": dims, "vs": list(vector_store_ids), "k": limit}
        async with self._engine.begin() as conn:
            if file_ids is not None:
                # Filtered: HNSW post-filtering would lose results (no iterative scans before pgvector
                # 0.8), and filtered sets are usually small, so search them exactly.
                params["files"] = list(file_ids)
                return await self._exact(conn, params, with_files=True)
            await conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(self._ef_search, limit)}"))
            result = await conn.execute(
                text(
                    f"SELECT id, 1 - ((embedding::vector({dims})) <=> CAST(CAST(:q AS text) AS vector({dims}))) "
                    "AS score FROM retrieval_chunks WHERE embedding_dims = :d AND vector_store_id = ANY(:vs) "
                    f"ORDER BY (embedding::vector({dims})) <=> CAST(CAST(:q AS text) AS vector({dims})) LIMIT :k"
                ),
                params,
            )
            found = [Candidate(int(r[0]), float(r[1])) for r in result]
            if len(found) < limit:
                # The graph walk ends after ef_search nodes, mostly other stores' when this store is
                # a small part of the table: fall back to an exact scan of this store.
                found = await self._exact(conn, params, with_files=False)
            return found

    async def keyword_candidates(
        self,
        vector_store_ids: Sequence[str],
        terms: Sequence[str],
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        if not terms:
            return []
        # Terms are plain words (query_terms): quoting each keeps to_tsquery from parsing operators.
        tsquery = " | ".join("'" + t.replace("'", "''").replace("\\", "") + "'" for t in terms)
        sql = (
            "SELECT c.id, ts_rank_cd(c.tsv, q, 1) AS score FROM retrieval_chunks c, "
            "to_tsquery('english', :tsq) q WHERE c.tsv @@ q AND c.vector_store_id = ANY(:vs)"
        )
        params: dict[str, Any] = {"tsq": tsquery, "vs": list(vector_store_ids), "k": limit}
        if file_ids is not None:
            if not file_ids:
                return []
            sql += " AND c.file_id = ANY(:files)"
            params["files"] = list(file_ids)
        sql += " ORDER BY score DESC, c.id LIMIT :k"
        async with self._engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [Candidate(int(r[0]), float(r[1])) for r in result]

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        if not chunk_ids:
            return {}
        async with self._engine.connect() as conn:
            result = await conn.execute(
                text(f"SELECT {_CHUNK_COLUMNS} WHERE c.id = ANY(:ids)"), {"ids": [int(i) for i in chunk_ids]}
            )
            return {int(r[0]): _stored(r) for r in result}


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})
