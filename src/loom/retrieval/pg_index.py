"""PostgreSQL index: pgvector HNSW (cosine) for vectors, tsvector + GIN with BM25 for keywords.

Vectors travel as pgvector's text form, cast in SQL, so the index needs no codec registered on the
application's engine. The column is dimension-less; each embedding size has a partial HNSW index
(see `schema.hnsw_index_statement`), and queries cast to that size so the planner can use it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom.retrieval.chunking import Chunk
from loom.retrieval.embedding import Vectors
from loom.retrieval.index import Attributes, Candidate, FileEntry, StoredChunk
from loom.retrieval.schema import DEFAULT_DIMENSIONS, TEXT_SEARCH_CONFIG, create_schema, hnsw_index_statement
from loom.retrieval.sqlite_index import _stored


def vector_literal(vector: Any) -> str:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    return "[" + ",".join(map(repr, arr.tolist())) + "]"


BM25_K1 = 1.2
BM25_B = 0.75
STATS_TTL_S = 300.0
MAX_SCORED = 5000
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
        self._stats: dict[tuple[str, ...], tuple[int, float, float]] = {}
        self._df: dict[tuple[tuple[str, ...], str], tuple[int, float]] = {}
        self._common: tuple[dict[str, float], float] | None = None

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
            # BM25 needs |D| and per-term frequencies; both come from the same tsvector (configuration
            # `TEXT_SEARCH_CONFIG`) the GIN index holds, computed once here for a jsonb lookup per query.
            await conn.execute(
                text(
                    "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, "
                    "end_offset, token_count, text, embedding, embedding_dims, doc_len, term_freqs) "
                    "SELECT :vs, :f, :i, :s, :e, :t, :text, CAST(CAST(:emb AS text) AS vector), :d, s.len, s.tf "
                    "FROM (SELECT COALESCE(sum(array_length(positions, 1)), 0) AS len, "
                    "COALESCE(jsonb_object_agg(lexeme, array_length(positions, 1)), '{}'::jsonb) AS tf "
                    f"FROM unnest(to_tsvector('{TEXT_SEARCH_CONFIG}', CAST(:text AS text)))) AS s"
                ),
                rows,
            )
        self._stats.clear()
        self._df.clear()

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
        self._stats.clear()
        self._df.clear()
        return int(result.rowcount or 0)

    async def delete_store(self, vector_store_id: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs"), {"vs": vector_store_id}
            )
            await conn.execute(text("DELETE FROM retrieval_files WHERE vector_store_id = :vs"), {"vs": vector_store_id})
        self._stats.clear()
        self._df.clear()
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
            # asyncpg prepares statements; after five runs PostgreSQL may switch to a generic plan
            # that cannot see how selective `file_id = ANY(...)` is and scans every row (20x slower).
            await conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
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

    async def _corpus_stats(self, conn: AsyncConnection, vector_store_ids: Sequence[str]) -> tuple[int, float]:
        """Chunk count and mean length of these stores, cached briefly (exact BM25 needs neither
        to the last row, and counting a million rows per query would dominate latency)."""
        key = tuple(sorted(set(vector_store_ids)))
        cached = self._stats.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[2] < STATS_TTL_S:
            return cached[0], cached[1]
        row = (
            await conn.execute(
                text("SELECT count(*), avg(doc_len) FROM retrieval_chunks WHERE vector_store_id = ANY(:vs)"),
                {"vs": list(key)},
            )
        ).one()
        n, avgdl = int(row[0]), float(row[1] or 1.0)
        self._stats[key] = (n, avgdl, now)
        return n, avgdl

    async def _document_frequencies(
        self, conn: AsyncConnection, vector_store_ids: Sequence[str], lexemes: Sequence[str]
    ) -> dict[str, int]:
        """Chunks holding each lexeme in these stores, cached briefly: counting a common word's
        rows costs tens of milliseconds at 100k chunks, and BM25 barely moves with a few more."""
        key = tuple(sorted(set(vector_store_ids)))
        now = time.monotonic()
        out: dict[str, int] = {}
        missing: list[str] = []
        for lex in lexemes:
            hit = self._df.get((key, lex))
            if hit is not None and now - hit[1] < STATS_TTL_S:
                out[lex] = hit[0]
            else:
                missing.append(lex)
        if missing:
            # Common lexemes: ANALYZE's element statistics of the tsvector column already hold their
            # frequency (table-wide), and counting their rows is what costs. Rare ones are counted.
            n, _ = await self._corpus_stats(conn, vector_store_ids)
            common = await self._common_lexemes(conn)
            to_count = [lex for lex in missing if lex not in common]
            for lex in missing:
                if lex in common:
                    out[lex] = max(1, round(common[lex] * n))
            if to_count:
                rows = (
                    await conn.execute(
                        text(
                            "SELECT l, (SELECT count(*) FROM retrieval_chunks c WHERE c.vector_store_id = ANY(:vs) "
                            "AND c.tsv @@ CAST(quote_literal(l) AS tsquery)) FROM unnest(CAST(:lex AS text[])) AS l"
                        ),
                        {"vs": list(key), "lex": to_count},
                    )
                ).all()
                out.update({str(r[0]): int(r[1]) for r in rows})
            for lex in missing:
                self._df[(key, lex)] = (out[lex], now)
        return out

    async def _common_lexemes(self, conn: AsyncConnection) -> dict[str, float]:
        """Lexeme -> share of rows, for the tsvector column's most common elements (pg_stats)."""
        now = time.monotonic()
        if self._common is not None and now - self._common[1] < STATS_TTL_S:
            return self._common[0]
        row = (
            await conn.execute(
                text(
                    "SELECT CAST(CAST(most_common_elems AS text) AS text[]), most_common_elem_freqs FROM pg_stats "
                    "WHERE tablename = 'retrieval_chunks' AND attname = 'tsv' AND schemaname = current_schema()"
                )
            )
        ).first()
        common: dict[str, float] = {}
        if row is not None and row[0] is not None and row[1] is not None:
            # The frequency array carries three extra trailing values (min, max, null share).
            common = {str(lex): float(f) for lex, f in zip(row[0], row[1][: len(row[0])], strict=True)}
        self._common = (common, now)
        return common

    async def keyword_candidates(
        self,
        vector_store_ids: Sequence[str],
        terms: Sequence[str],
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        """Okapi BM25 (k1 1.2, b 0.75) over the tsvector: the GIN index finds chunks with any query
        lexeme, term frequencies come from the tsvector's positions. ts_rank_cd measured far worse
        on SciFact (nDCG@10 0.38 against 0.68)."""
        if not terms or (file_ids is not None and not file_ids):
            return []
        async with self._engine.connect() as conn:
            lexemes: list[str] = list(
                (
                    await conn.execute(
                        text(f"SELECT tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', :q))"),
                        {"q": " ".join(terms)},
                    )
                ).scalar_one()
                or []
            )
            if not lexemes:
                return []
            await conn.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
            n, avgdl = await self._corpus_stats(conn, vector_store_ids)
            df = await self._document_frequencies(conn, vector_store_ids, lexemes)
            df = {lex: d for lex, d in df.items() if d}
            if not df:
                return []
            idf = {lex: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for lex, d in df.items()}
            # MaxScore: score only chunks holding one of the rarer terms, adding terms (rarest first)
            # until the chunks left out, which hold only the remaining common terms, cannot beat
            # the current k-th score. Exact, and it skips scanning the huge posting sets of
            # common words, which dominate the cost of an OR query.
            order = sorted(idf, key=lambda lex: -idf[lex])
            params: dict[str, Any] = {
                "lex": list(idf),
                "idf": list(idf.values()),
                "vs": list(vector_store_ids),
                "k1": BM25_K1,
                "b": BM25_B,
                "avgdl": max(avgdl, 1.0),
                "k": limit,
            }
            if file_ids is not None:
                params["files"] = list(file_ids)
            bounds = [idf[x] * (BM25_K1 + 1) for x in order]
            # rest[j]: the best score a chunk can reach holding only terms order[j:].
            rest = [sum(bounds[j:]) for j in range(len(order) + 1)]
            # Start with the rarest terms that can fill the candidate list.
            size, covered = 0, 0
            while size < len(order) and (covered < limit or size == 0):
                covered += df[order[size]]
                size += 1
            found: list[Candidate] = []
            while True:
                params["tsq"] = " | ".join("'" + x.replace("'", "''") + "'" for x in order[:size])
                result = await conn.execute(text(self._bm25_sql(file_ids is not None)), params)
                found = [Candidate(int(r[0]), float(r[1])) for r in result]
                if size == len(order):
                    break
                threshold = found[-1].score if len(found) >= limit else 0.0
                if rest[size] <= threshold:
                    break
                # Grow to the shortest prefix whose left-out terms cannot reach the threshold...
                grow = next(j for j in range(size + 1, len(order) + 1) if rest[j] <= threshold)
                # ...unless that means scoring most of a large store: past MAX_SCORED chunks the
                # ranking is by the rarer terms' chunks only (approximate, bounded latency).
                if sum(df[x] for x in order[:grow]) > MAX_SCORED:
                    break
                size = grow
            return found

    @staticmethod
    def _bm25_sql(with_files: bool) -> str:
        # Every parameter is cast: PostgreSQL infers an untyped parameter's type from its operand, so
        # `:b * c.doc_len` bound b (0.75) as an integer and `c.doc_len / :avgdl` divided integers,
        # which flattened length normalisation (SciFact keyword nDCG@10 0.671 instead of 0.687).
        score = (
            "(SELECT sum(q.idf * (tf * (CAST(:k1 AS float8) + 1)) / (tf + CAST(:k1 AS float8) * "
            "(1 - CAST(:b AS float8) + CAST(:b AS float8) * c.doc_len / CAST(:avgdl AS float8)))) "
            "FROM unnest(CAST(:lex AS text[]), CAST(:idf AS float8[])) AS q(lexeme, idf), "
            "LATERAL CAST(COALESCE(c.term_freqs ->> q.lexeme, '0') AS float8) AS tf)"
        )
        if not with_files:
            return (
                f"SELECT c.id, {score} AS score FROM retrieval_chunks c "
                "WHERE c.tsv @@ CAST(:tsq AS tsquery) AND c.vector_store_id = ANY(:vs) "
                "ORDER BY score DESC, c.id LIMIT :k"
            )
        # Filtered: find the matching rows through the GIN index first (bounded by the MaxScore
        # term choice), then keep the allowed files'; the planner would otherwise walk every row
        # of the allowed files and score each one.
        return (
            "WITH m AS MATERIALIZED (SELECT id FROM retrieval_chunks "
            "WHERE tsv @@ CAST(:tsq AS tsquery) AND vector_store_id = ANY(:vs)) "
            f"SELECT c.id, {score} AS score FROM m JOIN retrieval_chunks c ON c.id = m.id "
            "WHERE c.file_id = ANY(:files) ORDER BY score DESC, c.id LIMIT :k"
        )

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
