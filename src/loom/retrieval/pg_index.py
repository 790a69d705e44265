"""PostgreSQL index: pgvector HNSW (cosine) for vectors, exact BM25 from in-memory postings for keywords
(`loom.retrieval.pg_keywords`).

Vectors travel as pgvector's text form, cast in SQL, so the index needs no codec registered on the
application's engine. The column is dimension-less; each embedding size has a partial HNSW index
(see `schema.hnsw_index_statement`), and queries cast to that size so the planner can use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom.retrieval.analysis import encode, query_hashes
from loom.retrieval.chunking import Chunk
from loom.retrieval.embedding import Vectors
from loom.retrieval.errors import IndexingFailed
from loom.retrieval.index import Attributes, Candidate, FileEntry, StoredChunk
from loom.retrieval.index_sql import (
    CHUNK_COLUMNS,
    DELETE_FILE_ENTRY,
    FILE_CHUNKS,
    file_entry,
    file_params,
    put_file_statement,
    set_attributes_statement,
    stored_chunk,
    token_blobs,
)
from loom.retrieval.pg_keywords import (
    DEFAULT_CACHE_BYTES,
    GENERATION_SEQUENCE,
    SESSION_SETTINGS,
    KeywordCache,
    raw_connection,
)
from loom.retrieval.schema import DEFAULT_DIMENSIONS, create_schema, hnsw_index_statement


def vector_literal(vector: Any) -> str:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    return "[" + ",".join(map(repr, arr.tolist())) + "]"


# How the files table's statements write their JSON parameter (`loom.retrieval.index_sql`).
_JSONB = "CAST(:attrs AS jsonb)"

# The first key of the per-store write lock (two-key advisory locks are a space of their own, apart
# from the one-key locks ingestion takes per file).
_STORE_LOCK_CLASS = 0x4C4F  # "LO"


async def _lock_store(conn: AsyncConnection, vector_store_id: str) -> None:
    """Serialize this transaction with the store's other writes until it ends, so that one store's
    generations commit in increasing order (`loom.retrieval.pg_keywords`)."""
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(:c, hashtext(:vs))"), {"c": _STORE_LOCK_CLASS, "vs": vector_store_id}
    )


class PostgresChunkIndex:
    def __init__(
        self,
        engine: AsyncEngine,
        dimensions: int = DEFAULT_DIMENSIONS,
        ef_search: int = 100,
        *,
        keyword_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._engine = engine
        self._dims = int(dimensions)
        self._hnsw_ready: set[int] = set()
        self._ef_search = int(ef_search)
        self.keywords = KeywordCache(engine, keyword_cache_bytes)

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await create_schema(conn, "postgresql", self._dims)

    async def _ensure_hnsw(self, dims: int) -> None:
        """The HNSW index for this embedding size (the migrations make the 256-dimensional one only):
        built when the first vectors of a size arrive, e.g. after the default embedder changes."""
        if dims in self._hnsw_ready:
            return
        try:
            async with self._engine.begin() as conn:
                await conn.execute(text(hnsw_index_statement(dims)))
        except DBAPIError:
            # Another replica built it at the same moment (IF NOT EXISTS does not cover the race).
            async with self._engine.connect() as conn:
                found = await conn.execute(
                    text("SELECT 1 FROM pg_indexes WHERE indexname = :n"), {"n": f"retrieval_chunks_hnsw_{dims}"}
                )
                if found.first() is None:
                    raise
        self._hnsw_ready.add(dims)

    async def put_file(
        self, vector_store_id: str, file_id: str, filename: str, attributes: Attributes | None = None
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                put_file_statement(_JSONB), file_params(vector_store_id, file_id, attributes, name=filename)
            )

    async def set_attributes(self, vector_store_id: str, file_id: str, attributes: Attributes | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(set_attributes_statement(_JSONB), file_params(vector_store_id, file_id, attributes))

    async def add_chunks(
        self,
        vector_store_id: str,
        file_id: str,
        chunks: Sequence[Chunk],
        vectors: Vectors,
        late_tokens: Sequence[bytes | None] | None = None,
    ) -> None:
        late, with_late = token_blobs(chunks, vectors, late_tokens)
        if not chunks:
            return
        dims = int(np.asarray(vectors).shape[1])
        late_column, late_value = (", late_tokens", ", r.lt") if with_late else ("", "")
        await self._ensure_hnsw(dims)
        # PostgreSQL text cannot hold NUL; parsers strip it, this guards direct callers.
        texts = [c.text.replace("\x00", "") for c in chunks]
        encoded = await asyncio.to_thread(lambda: [encode(t) for t in texts])
        async with self._engine.begin() as conn:
            await _lock_store(conn, vector_store_id)
            # One embedding size per store: a store's vectors come from one model (`store_embedders`).
            found = await conn.execute(
                text("SELECT embedding_dims FROM retrieval_chunks WHERE vector_store_id = :vs LIMIT 1"),
                {"vs": vector_store_id},
            )
            stored = found.scalar()
            if stored is not None and int(stored) != dims:
                raise IndexingFailed(
                    f"Vector store {vector_store_id} holds {stored}-dimensional vectors; "
                    f"refusing to add {dims}-dimensional ones from another model."
                )
            # The store's new generation, which its new chunks carry (`loom.retrieval.pg_keywords`).
            generation = (
                await conn.execute(
                    text(
                        f"WITH g AS (SELECT nextval('{GENERATION_SEQUENCE}') AS g) INSERT INTO retrieval_store_stats "
                        "(vector_store_id, chunks, generation, deleted_generation) SELECT :vs, 0, g, g "
                        "FROM g ON CONFLICT (vector_store_id) DO UPDATE SET generation = excluded.generation "
                        "RETURNING generation"
                    ),
                    {"vs": vector_store_id},
                )
            ).scalar_one()
            # The store's chunk count moves in the same statement, so it always matches the committed chunks.
            await conn.execute(
                text(
                    "WITH ins AS (INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, "
                    "start_offset, end_offset, token_count, text, embedding, embedding_dims, "
                    f"kw_terms, kw_tfs, kw_len, kw_generation{late_column}) "
                    f"SELECT :vs, :f, r.i, r.s, r.e, r.t, r.txt, CAST(r.emb AS vector), :d, r.kt, r.kf, r.kl, :g{late_value} "
                    "FROM unnest(CAST(:i AS int[]), CAST(:s AS int[]), CAST(:e AS int[]), CAST(:t AS int[]), "
                    "CAST(:txt AS text[]), CAST(:emb AS text[]), CAST(:kt AS bytea[]), CAST(:kf AS bytea[]), "
                    "CAST(:kl AS int[]), CAST(:lt AS bytea[])) AS r(i, s, e, t, txt, emb, kt, kf, kl, lt) RETURNING 1) "
                    "UPDATE retrieval_store_stats SET chunks = chunks + (SELECT count(*) FROM ins) "
                    "WHERE vector_store_id = :vs"
                ),
                {
                    "vs": vector_store_id,
                    "f": file_id,
                    "d": dims,
                    "i": [c.index for c in chunks],
                    "s": [c.start for c in chunks],
                    "e": [c.end for c in chunks],
                    "t": [c.tokens for c in chunks],
                    "txt": texts,
                    "emb": [vector_literal(v) for v in vectors],
                    "kt": [e.terms for e in encoded],
                    "kf": [e.tfs for e in encoded],
                    "kl": [e.length for e in encoded],
                    "lt": late,
                    "g": int(generation),
                },
            )

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self._engine.begin() as conn:
            await _lock_store(conn, vector_store_id)
            removed = (
                await conn.execute(
                    text(
                        "WITH d AS (DELETE FROM retrieval_chunks WHERE vector_store_id = :vs AND file_id = :f "
                        "RETURNING 1), "
                        "s AS (UPDATE retrieval_store_stats SET chunks = chunks - (SELECT count(*) FROM d) "
                        "WHERE vector_store_id = :vs) "
                        "SELECT count(*) FROM d"
                    ),
                    {"vs": vector_store_id, "f": file_id},
                )
            ).scalar_one()
            if removed:
                # A new generation that is a delete's: replicas reload the store (`pg_keywords`).
                await conn.execute(
                    text(
                        "UPDATE retrieval_store_stats SET (generation, deleted_generation) = "
                        f"(SELECT g, g FROM (SELECT nextval('{GENERATION_SEQUENCE}') AS g) AS n) "
                        "WHERE vector_store_id = :vs"
                    ),
                    {"vs": vector_store_id},
                )
            await conn.execute(DELETE_FILE_ENTRY, {"vs": vector_store_id, "f": file_id})
        return int(removed)

    async def delete_store(self, vector_store_id: str) -> int:
        params = {"vs": vector_store_id}
        async with self._engine.begin() as conn:
            await _lock_store(conn, vector_store_id)
            result = await conn.execute(text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs"), params)
            await conn.execute(text("DELETE FROM retrieval_files WHERE vector_store_id = :vs"), params)
            await conn.execute(text("DELETE FROM retrieval_store_stats WHERE vector_store_id = :vs"), params)
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
            return [file_entry(r) for r in result]

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[StoredChunk]:
        async with self._engine.connect() as conn:
            result = await conn.execute(FILE_CHUNKS, {"vs": vector_store_id, "f": file_id})
            return [stored_chunk(r) for r in result]

    async def _exact(self, raw: Any, args: Sequence[Any], files: list[str] | None) -> list[Candidate]:
        # A different ORDER BY expression than the HNSW index: the planner does an exact scan,
        # narrowed by the (vector_store_id, file_id) b-tree.
        sql = (
            "SELECT id, 1 - (embedding <=> CAST(CAST($1 AS text) AS vector)) AS score FROM retrieval_chunks "
            "WHERE embedding_dims = $2 AND vector_store_id = ANY($3::text[])"
        )
        if files is not None:
            sql += " AND file_id = ANY($5::text[])"
            args = [*args, files]
        sql += " ORDER BY embedding <=> CAST(CAST($1 AS text) AS vector) LIMIT $4"
        return [Candidate(int(r[0]), float(r[1])) for r in await raw.fetch(sql, *args)]

    async def vector_candidates(
        self,
        vector_store_ids: Sequence[str],
        vector: Vectors,
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        dims = int(np.asarray(vector).size)
        args = [vector_literal(vector), dims, list(vector_store_ids), int(limit)]
        async with raw_connection(self._engine) as raw, raw.transaction():
            # asyncpg prepares statements; after five runs PostgreSQL may switch to a generic plan
            # that cannot see how selective `file_id = ANY(...)` is and scans every row (20x slower).
            # JIT: see `SESSION_SETTINGS`.
            await raw.execute(
                f"SELECT {SESSION_SETTINGS}, set_config('hnsw.ef_search', $1, true)", str(max(self._ef_search, limit))
            )
            if file_ids is not None:
                # Filtered: HNSW post-filtering would lose results (no iterative scans before pgvector
                # 0.8), and filtered sets are usually small, so search them exactly.
                return await self._exact(raw, args, list(file_ids))
            rows = await raw.fetch(
                f"SELECT id, 1 - ((embedding::vector({dims})) <=> CAST(CAST($1 AS text) AS vector({dims}))) "
                "AS score FROM retrieval_chunks WHERE embedding_dims = $2 AND vector_store_id = ANY($3::text[]) "
                f"ORDER BY (embedding::vector({dims})) <=> CAST(CAST($1 AS text) AS vector({dims})) LIMIT $4",
                *args,
            )
            found = [Candidate(int(r[0]), float(r[1])) for r in rows]
            if len(found) < limit:
                # The graph walk ends after ef_search nodes, mostly other stores' when this store is
                # a small part of the table: fall back to an exact scan of this store.
                found = await self._exact(raw, args, None)
            return found

    async def keyword_candidates(
        self,
        vector_store_ids: Sequence[str],
        terms: Sequence[str],
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        """Exact Okapi BM25 over the stores' in-memory postings (`loom.retrieval.pg_keywords`)."""
        if not terms or (file_ids is not None and not file_ids):
            return []
        hashes = query_hashes(terms)
        if not hashes.size:
            return []
        return await self.keywords.search(vector_store_ids, hashes, limit, file_ids)

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        if not chunk_ids:
            return {}
        async with raw_connection(self._engine) as raw:
            rows = await raw.fetch(
                f"SELECT {CHUNK_COLUMNS} WHERE c.id = ANY($1::bigint[])", [int(i) for i in chunk_ids]
            )
            return {int(r[0]): stored_chunk(r) for r in rows}

    async def late_tokens(self, chunk_ids: Collection[int]) -> dict[int, bytes]:
        if not chunk_ids:
            return {}
        async with raw_connection(self._engine) as raw:
            rows = await raw.fetch(
                "SELECT id, late_tokens FROM retrieval_chunks WHERE id = ANY($1::bigint[]) AND late_tokens IS NOT NULL",
                [int(i) for i in chunk_ids],
            )
            return {int(r[0]): bytes(r[1]) for r in rows}
