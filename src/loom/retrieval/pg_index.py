"""PostgreSQL index: pgvector HNSW (cosine) for vectors, tsvector + GIN with BM25 for keywords.

Vectors travel as pgvector's text form, cast in SQL, so the index needs no codec registered on the
application's engine. The column is dimension-less; each embedding size has a partial HNSW index
(see `schema.hnsw_index_statement`), and queries cast to that size so the planner can use it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loom.retrieval.chunking import Chunk
from loom.retrieval.embedding import Vectors
from loom.retrieval.index import Attributes, Candidate, FileEntry, StoredChunk
from loom.retrieval.schema import DEFAULT_DIMENSIONS, TEXT_SEARCH_CONFIG, create_schema
from loom.retrieval.sqlite_index import _stored


def vector_literal(vector: Any) -> str:
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    return "[" + ",".join(map(repr, arr.tolist())) + "]"


BM25_K1 = 1.2
BM25_B = 0.75
MAX_SCORED = 5000
# Keyword search in a store of LARGE_STORE chunks or more scores at most about FIRST_PASS_ROWS
# chunks in its first pass (see `keyword_candidates`); in smaller stores the first pass scores
# every chunk holding its terms, however many, so that they always get the exact ranking.
FIRST_PASS_ROWS = 1000
LARGE_STORE = 50_000
CO_OCCURRING_TERMS = 8
MAX_GROUPS = 6  # each an index scan of its own
# Settings for one search transaction, whatever the server's defaults: asyncpg prepares statements,
# and after five runs PostgreSQL may switch to a generic plan that cannot see how selective a
# tsquery or a file list is. And no JIT: a server built with LLVM compiles every plan whose cost
# estimate passes `jit_above_cost` (100000; an exact vector scan over 100k chunks estimates 167k),
# which takes longer than these few-millisecond queries run (pgserver's build has no JIT at all).
_SESSION_SETTINGS = "set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true)"
_CHUNK_COLUMNS = (
    "c.id, c.vector_store_id, c.file_id, f.filename, c.chunk_index, c.start_offset, c.end_offset, c.text, "
    "f.attributes FROM retrieval_chunks c JOIN retrieval_files f "
    "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id"
)


# The first key of the per-store write lock (two-key advisory locks are a space of their own, apart
# from the one-key locks ingestion takes per file).
_STORE_LOCK_CLASS = 0x4C4F  # "LO"


async def _lock_store(conn: AsyncConnection, vector_store_id: str) -> None:
    """Serialize this transaction with the store's other statistics writes until it ends. Two writes
    of one store update the same lexeme rows, and a delete's UPDATE and an ingest's INSERT … ON
    CONFLICT take those row locks in different orders: without this they could deadlock."""
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
        first_pass_rows: int = FIRST_PASS_ROWS,
        large_store: int = LARGE_STORE,
    ) -> None:
        self._engine = engine
        self._dims = int(dimensions)
        self._ef_search = int(ef_search)
        self._first_pass_rows = int(first_pass_rows)
        self._large_store = int(large_store)

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await create_schema(conn, "postgresql", self._dims)

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
        async with self._engine.begin() as conn:
            await _lock_store(conn, vector_store_id)
            # BM25 needs |D| and per-term frequencies; both come from the same tsvector (configuration
            # `TEXT_SEARCH_CONFIG`) the GIN index holds, computed once here for a jsonb lookup per
            # query. The store's statistics (lexeme document frequencies, chunk count, total length)
            # move in the same statement, so they always match the committed chunks.
            await conn.execute(
                text(
                    "WITH ins AS (INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, "
                    "start_offset, end_offset, token_count, text, embedding, embedding_dims, doc_len, term_freqs) "
                    "SELECT :vs, :f, r.i, r.s, r.e, r.t, r.txt, CAST(r.emb AS vector), :d, s.len, s.tf "
                    "FROM unnest(CAST(:i AS int[]), CAST(:s AS int[]), CAST(:e AS int[]), CAST(:t AS int[]), "
                    "CAST(:txt AS text[]), CAST(:emb AS text[])) AS r(i, s, e, t, txt, emb) "
                    "CROSS JOIN LATERAL (SELECT COALESCE(sum(array_length(positions, 1)), 0) AS len, "
                    "COALESCE(jsonb_object_agg(lexeme, array_length(positions, 1)), '{}'::jsonb) AS tf "
                    f"FROM unnest(to_tsvector('{TEXT_SEARCH_CONFIG}', r.txt))) AS s "
                    "RETURNING tsv, doc_len), "
                    # Sorted, so that two ingests into one store lock shared lexemes in the same order.
                    "terms AS (INSERT INTO retrieval_terms (vector_store_id, lexeme, df) "
                    "SELECT :vs, t.lexeme, count(*) FROM ins, LATERAL unnest(tsvector_to_array(ins.tsv)) AS t(lexeme) "
                    "GROUP BY t.lexeme ORDER BY t.lexeme "
                    "ON CONFLICT (vector_store_id, lexeme) DO UPDATE SET df = retrieval_terms.df + excluded.df) "
                    "INSERT INTO retrieval_store_stats (vector_store_id, chunks, total_len) "
                    "SELECT :vs, count(*), COALESCE(sum(doc_len), 0) FROM ins "
                    "ON CONFLICT (vector_store_id) DO UPDATE SET chunks = retrieval_store_stats.chunks + "
                    "excluded.chunks, total_len = retrieval_store_stats.total_len + excluded.total_len"
                ),
                {
                    "vs": vector_store_id,
                    "f": file_id,
                    "d": dims,
                    "i": [c.index for c in chunks],
                    "s": [c.start for c in chunks],
                    "e": [c.end for c in chunks],
                    "t": [c.tokens for c in chunks],
                    # PostgreSQL text cannot hold NUL; parsers strip it, this guards direct callers.
                    "txt": [c.text.replace("\x00", "") for c in chunks],
                    "emb": [vector_literal(v) for v in vectors],
                },
            )

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self._engine.begin() as conn:
            await _lock_store(conn, vector_store_id)
            removed = (
                await conn.execute(
                    text(
                        "WITH d AS (DELETE FROM retrieval_chunks WHERE vector_store_id = :vs AND file_id = :f "
                        "RETURNING tsv, doc_len), "
                        "t AS (UPDATE retrieval_terms r SET df = r.df - x.n FROM (SELECT t.lexeme, count(*) AS n "
                        "FROM d, LATERAL unnest(tsvector_to_array(d.tsv)) AS t(lexeme) GROUP BY t.lexeme) AS x "
                        "WHERE r.vector_store_id = :vs AND r.lexeme = x.lexeme), "
                        "s AS (UPDATE retrieval_store_stats SET chunks = chunks - (SELECT count(*) FROM d), "
                        "total_len = total_len - (SELECT COALESCE(sum(doc_len), 0) FROM d) "
                        "WHERE vector_store_id = :vs) "
                        "SELECT count(*) FROM d"
                    ),
                    {"vs": vector_store_id, "f": file_id},
                )
            ).scalar_one()
            if removed:
                # A separate statement: the CTE's updates are not visible to the rest of its statement.
                await conn.execute(
                    text("DELETE FROM retrieval_terms WHERE vector_store_id = :vs AND df <= 0"), {"vs": vector_store_id}
                )
            await conn.execute(
                text("DELETE FROM retrieval_files WHERE vector_store_id = :vs AND file_id = :f"),
                {"vs": vector_store_id, "f": file_id},
            )
        return int(removed)

    async def delete_store(self, vector_store_id: str) -> int:
        params = {"vs": vector_store_id}
        async with self._engine.begin() as conn:
            await _lock_store(conn, vector_store_id)
            result = await conn.execute(text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs"), params)
            await conn.execute(text("DELETE FROM retrieval_files WHERE vector_store_id = :vs"), params)
            await conn.execute(text("DELETE FROM retrieval_terms WHERE vector_store_id = :vs"), params)
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
            # JIT: see `_SESSION_SETTINGS`.
            await conn.execute(
                text(f"SELECT {_SESSION_SETTINGS}, set_config('hnsw.ef_search', :ef, true)"),
                {"ef": str(max(self._ef_search, limit))},
            )
            if file_ids is not None:
                # Filtered: HNSW post-filtering would lose results (no iterative scans before pgvector
                # 0.8), and filtered sets are usually small, so search them exactly.
                params["files"] = list(file_ids)
                return await self._exact(conn, params, with_files=True)
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
        """Okapi BM25 (k1 1.2, b 0.75) over the tsvector: the GIN index finds chunks with query
        lexemes, term frequencies come from a per-chunk jsonb computed at ingest. ts_rank_cd
        measured far worse on SciFact (nDCG@10 0.38 against 0.68).

        MaxScore: score only chunks holding one of the rarer terms, adding terms (rarest first)
        until the chunks left out, which hold only the remaining common terms, cannot beat the
        current k-th score (a term adds at most `idf * (k1 + 1)`). Exact, and it skips scanning
        the huge posting sets of common words, which dominate the cost of an OR query; past
        MAX_SCORED chunks it stops (approximate, bounded latency).

        In a large store even the rarest query term can be in thousands of chunks (at a million
        chunks, ~5 us each to score). Past `first_pass_rows` of them the ranking is approximate:
        the chunks holding two or three of the rarer terms together are scored (each AND group
        is one GIN scan, and their top is where BM25's top is), else the first `first_pass_rows`
        chunks holding the rarest term.
        """
        if not terms or (file_ids is not None and not file_ids):
            return []
        async with self._engine.connect() as conn:
            # One round trip: the query's lexemes (same configuration as the documents), each one's
            # document frequency in these stores and the stores' size (tables `add_chunks` keeps),
            # and this transaction's planner settings (`_SESSION_SETTINGS`; a sequential scan would
            # decompress every chunk's tsvector to test it where a bitmap scan of the GIN index
            # needs none, and the planner does not cost that).
            rows = (
                await conn.execute(
                    text(
                        "SELECT l.lexeme, (SELECT sum(df) FROM retrieval_terms t WHERE t.vector_store_id = ANY(:vs) "
                        f"AND t.lexeme = l.lexeme), s.n, s.len, {_SESSION_SETTINGS}, "
                        "set_config('enable_seqscan', 'off', true) FROM (SELECT sum(chunks) AS n, "
                        "sum(total_len) AS len FROM retrieval_store_stats WHERE vector_store_id = ANY(:vs)) AS s "
                        f"LEFT JOIN unnest(tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', CAST(:q AS text)))) "
                        "AS l(lexeme) ON true"
                    ),
                    {"vs": list(vector_store_ids), "q": " ".join(terms)},
                )
            ).all()
            n = int(rows[0][2] or 0)
            df = {str(r[0]): int(r[1]) for r in rows if r[0] is not None and r[1]}
            if not df or n <= 0:
                return []
            avgdl = max(float(rows[0][3] or 0) / n, 1.0)
            idf = {lex: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for lex, d in df.items()}
            order = sorted(idf, key=lambda lex: (-idf[lex], lex))  # rarest first
            bound = {lex: idf[lex] * (BM25_K1 + 1) for lex in order}
            params: dict[str, Any] = {"vs": list(vector_store_ids), "k": limit}
            if file_ids is not None:
                params["files"] = list(file_ids)

            async def scored(queries: Sequence[str], cap: int | None = None) -> list[Candidate]:
                params.update({f"q{i}": q for i, q in enumerate(queries)}, cap=cap)
                sql = _bm25_sql(order, idf, avgdl, len(queries), file_ids is not None, cap is not None)
                result = await conn.execute(text(sql), params)
                return [Candidate(int(r[0]), float(r[1])) for r in result]

            def any_of(lexemes: Sequence[str]) -> str:
                return " | ".join(_quote(x) for x in lexemes)

            # rest[j]: the best score a chunk can reach holding only terms order[j:].
            rest = [sum(bound[x] for x in order[j:]) for j in range(len(order) + 1)]
            # Start with the rarest terms that can fill the candidate list.
            size, covered = 0, 0
            while size < len(order) and (covered < limit or size == 0):
                covered += df[order[size]]
                size += 1
            if covered > self._first_pass_rows and n >= self._large_store:
                # Even the rarest terms are in too many chunks (a large store, a query of common
                # words): score the chunks holding two or three of the rarer terms together.
                groups = _co_occurring(order, df, n, bound, limit, self._first_pass_rows)
                if groups:
                    # One condition per AND group, so that each is an index scan of its own that
                    # skips through the longer posting lists (one tsquery ORing ANDs reads them all).
                    return await scored([" & ".join(_quote(x) for x in g) for g in groups])
                # Too few chunks hold two of them: score the first `first_pass_rows` chunks found
                # holding the rarest term (approximate, bounded latency).
                return await scored([any_of(order[:1])], cap=self._first_pass_rows)
            found = await scored([any_of(order[:size])])
            while size < len(order):
                threshold = found[-1].score if len(found) >= limit else 0.0
                if rest[size] <= threshold:
                    break
                # Grow to the shortest prefix whose left-out terms cannot reach the threshold...
                grow = next(j for j in range(size + 1, len(order) + 1) if rest[j] <= threshold)
                # ...unless that means scoring most of a large store: past MAX_SCORED chunks the
                # ranking is by the rarer terms' chunks only (approximate, bounded latency).
                if sum(df[x] for x in order[:grow]) > MAX_SCORED:
                    break
                # Only the chunks not scored yet: a score counts every query term, so the chunks
                # holding one of the first terms already have theirs.
                more = await scored([f"({any_of(order[size:grow])}) & !({any_of(order[:size])})"])
                best = {c.chunk_id: c.score for c in found + more}
                found = [Candidate(i, v) for i, v in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
                size = grow
            return found

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        if not chunk_ids:
            return {}
        async with self._engine.connect() as conn:
            result = await conn.execute(
                text(f"SELECT {_CHUNK_COLUMNS} WHERE c.id = ANY(:ids)"), {"ids": [int(i) for i in chunk_ids]}
            )
            return {int(r[0]): _stored(r) for r in result}


def _quote(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _co_occurring(
    order: Sequence[str], df: dict[str, int], n: int, bound: dict[str, float], limit: int, budget: int
) -> list[tuple[str, ...]]:
    """AND groups of two (else three) of the rarer query terms, best-scoring groups first, as many
    as fit `budget` chunks (estimated as if terms occurred independently); [] if no group size
    gives at least `limit` chunks that way. Terms in a tenth of the chunks or more are left out:
    they add little to a score, and intersecting their posting lists costs more than it saves."""
    terms = [x for x in order if df[x] * 10 < n][:CO_OCCURRING_TERMS]
    for size in (2, 3):
        groups = sorted(itertools.combinations(terms, size), key=lambda g: -sum(bound[x] for x in g))
        chosen: list[tuple[str, ...]] = []
        rows = 0.0
        for g in groups:
            estimate = n * math.prod(df[x] / n for x in g)
            if rows + estimate <= budget and len(chosen) < MAX_GROUPS:
                chosen.append(g)
                rows += estimate
        if rows >= limit:
            return chosen
    return []


_NAME_BYTES = 63  # PostgreSQL truncates longer identifiers (NAMEDATALEN - 1)


def _bm25_sql(
    lexemes: Sequence[str], idf: dict[str, float], avgdl: float, queries: int, with_files: bool, capped: bool
) -> str:
    """The BM25 scoring statement for these lexemes; chunks matching one of the tsqueries `:q0`,
    `:q1`, ... get scored (only the first `:cap` found if `capped`).

    A chunk's term frequencies are one compressed jsonb value: `jsonb_to_record` decompresses it
    once per chunk and reads every query lexeme (a `->>` per lexeme decompressed it each time,
    twice the cost). The lexemes are the record's column names, so they are quoted identifiers;
    one too long for an identifier is read with `->>` instead. Constants are written into the
    statement as float literals (PostgreSQL would otherwise infer an untyped parameter's type from
    its operand: `:b * c.doc_len` bound b as an integer once, which flattened length normalisation).
    """
    columns: list[str] = []
    terms: list[str] = []
    for lex in lexemes:
        if len(lex.encode()) <= _NAME_BYTES:
            name = '"' + lex.replace('"', '""') + '"'
            columns.append(f"{name} float8")
            tf = f"COALESCE(x.{name}, 0)"
        else:
            tf = "COALESCE(CAST(c.term_freqs ->> '" + lex.replace("'", "''") + "' AS float8), 0)"
        terms.append(f"{idf[lex]!r} * {tf} / ({tf} + n.norm)")
    norm = f"{BM25_K1!r} * (1 - {BM25_B!r} + {BM25_B!r} * c.doc_len / {avgdl!r})"
    score = f"{BM25_K1 + 1!r} * (" + " + ".join(terms) + ")"
    record = f", LATERAL jsonb_to_record(c.term_freqs) AS x({', '.join(columns)})" if columns else ""
    source = f"CROSS JOIN LATERAL (SELECT {norm} AS norm) AS n{record}"
    match = " OR ".join(f"tsv @@ CAST(:q{i} AS tsquery)" for i in range(queries))
    if not with_files and not capped:
        return (
            f"SELECT c.id, {score} AS score FROM retrieval_chunks c {source} "
            f"WHERE ({match}) AND c.vector_store_id = ANY(:vs) "
            "ORDER BY score DESC, c.id LIMIT :k"
        )
    # Filtered: find the matching rows through the GIN index first (bounded by the MaxScore
    # term choice), then keep the allowed files'; the planner would otherwise walk every row
    # of the allowed files and score each one.
    return (
        "WITH m AS MATERIALIZED (SELECT id FROM retrieval_chunks "
        f"WHERE ({match}) AND vector_store_id = ANY(:vs){' LIMIT :cap' if capped else ''}) "
        f"SELECT c.id, {score} AS score FROM m JOIN retrieval_chunks c ON c.id = m.id {source} "
        f"{'WHERE c.file_id = ANY(:files) ' if with_files else ''}ORDER BY score DESC, c.id LIMIT :k"
    )


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})
