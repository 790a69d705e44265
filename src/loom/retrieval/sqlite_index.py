"""SQLite index: exact vector search with numpy over float32 blobs, keywords with FTS5 (BM25).

Each store's vectors are loaded once into one matrix and cached in-process; a write to a store
drops its cache entry (SQLite deployments are one process, so the cache cannot go stale elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

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
)
from loom.retrieval.schema import create_schema


@dataclass(slots=True)
class _StoreVectors:
    ids: npt.NDArray[np.int64]
    file_codes: npt.NDArray[np.int32]
    file_ids: list[str]  # code -> file id
    matrix: Vectors


MAX_MATCHED = 20000


def _expanding(sql: str, *names: str) -> Any:
    return text(sql).bindparams(*(bindparam(n, expanding=True) for n in names))


class SQLiteChunkIndex:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._cache: dict[str, _StoreVectors] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Document frequencies for the keyword query planner; any write clears them.
        self._df: dict[str, int] = {}
        self._rows: int | None = None
        # Bumped by every write, so counts read across a write are not cached.
        self._generation = 0

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await create_schema(conn, "sqlite")

    def _invalidate(self, vector_store_id: str) -> None:
        self._cache.pop(vector_store_id, None)
        self._df.clear()
        self._rows = None
        self._generation += 1

    async def put_file(
        self, vector_store_id: str, file_id: str, filename: str, attributes: Attributes | None = None
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                put_file_statement(":attrs"), file_params(vector_store_id, file_id, attributes, name=filename)
            )

    async def set_attributes(self, vector_store_id: str, file_id: str, attributes: Attributes | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(set_attributes_statement(":attrs"), file_params(vector_store_id, file_id, attributes))

    async def add_chunks(self, vector_store_id: str, file_id: str, chunks: Sequence[Chunk], vectors: Vectors) -> None:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        rows = [
            {
                "vs": vector_store_id,
                "f": file_id,
                "i": c.index,
                "s": c.start,
                "e": c.end,
                "t": c.tokens,
                "text": c.text,
                "emb": np.ascontiguousarray(v, dtype=np.float32).tobytes(),
            }
            for c, v in zip(chunks, vectors, strict=True)
        ]
        async with self._engine.begin() as conn:
            if rows:
                # One embedding size per store: a store's vectors come from one model (`store_embedders`).
                found = await conn.execute(
                    text("SELECT length(embedding) FROM retrieval_chunks WHERE vector_store_id = :vs LIMIT 1"),
                    {"vs": vector_store_id},
                )
                stored, width = found.scalar(), 4 * int(np.asarray(vectors).shape[1])
                if stored is not None and int(stored) != width:
                    raise IndexingFailed(
                        f"Vector store {vector_store_id} holds {int(stored) // 4}-dimensional vectors; "
                        f"refusing to add {width // 4}-dimensional ones from another model."
                    )
                await conn.execute(
                    text(
                        "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, "
                        "end_offset, token_count, text, embedding) VALUES (:vs, :f, :i, :s, :e, :t, :text, :emb)"
                    ),
                    rows,
                )
        self._invalidate(vector_store_id)

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs AND file_id = :f"),
                {"vs": vector_store_id, "f": file_id},
            )
            await conn.execute(DELETE_FILE_ENTRY, {"vs": vector_store_id, "f": file_id})
        self._invalidate(vector_store_id)
        return int(result.rowcount or 0)

    async def delete_store(self, vector_store_id: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs"), {"vs": vector_store_id}
            )
            await conn.execute(text("DELETE FROM retrieval_files WHERE vector_store_id = :vs"), {"vs": vector_store_id})
        self._invalidate(vector_store_id)
        return int(result.rowcount or 0)

    async def list_files(self, vector_store_ids: Sequence[str]) -> list[FileEntry]:
        async with self._engine.connect() as conn:
            result = await conn.execute(
                _expanding(
                    "SELECT vector_store_id, file_id, filename, attributes FROM retrieval_files "
                    "WHERE vector_store_id IN :vs",
                    "vs",
                ),
                {"vs": list(vector_store_ids)},
            )
            return [file_entry(r) for r in result]

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[StoredChunk]:
        async with self._engine.connect() as conn:
            result = await conn.execute(FILE_CHUNKS, {"vs": vector_store_id, "f": file_id})
            return [stored_chunk(r) for r in result]

    async def _store_vectors(self, vector_store_id: str) -> _StoreVectors:
        cached = self._cache.get(vector_store_id)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(vector_store_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(vector_store_id)
            if cached is not None:
                return cached
            async with self._engine.connect() as conn:
                result = await conn.execute(
                    text("SELECT id, file_id, embedding FROM retrieval_chunks WHERE vector_store_id = :vs"),
                    {"vs": vector_store_id},
                )
                rows = result.all()
            loaded = await asyncio.to_thread(_build_matrix, rows)
            self._cache[vector_store_id] = loaded
            return loaded

    async def vector_candidates(
        self,
        vector_store_ids: Sequence[str],
        vector: Vectors,
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        found: list[Candidate] = []
        for vs in dict.fromkeys(vector_store_ids):
            store = await self._store_vectors(vs)
            # A 100k x 256 matrix product takes milliseconds: not on the event loop.
            found.extend(await asyncio.to_thread(_top_k, store, query, limit, file_ids))
        found.sort(key=lambda c: c.score, reverse=True)
        return found[:limit]

    async def _document_frequencies(self, terms: Sequence[str]) -> tuple[int, dict[str, int]]:
        """Rows in the whole FTS index, and rows holding each term (cached until the next write)."""
        # Read into locals: a write may clear the cache while this coroutine waits on the database.
        generation = self._generation
        rows = self._rows
        df = {t: self._df[t] for t in terms if t in self._df}
        async with self._engine.connect() as conn:
            if rows is None:
                rows = int((await conn.execute(text("SELECT count(*) FROM retrieval_chunks"))).scalar_one())
            for term in terms:
                if term in df:
                    continue
                df[term] = int(
                    (
                        await conn.execute(
                            text("SELECT count(*) FROM retrieval_chunks_fts WHERE retrieval_chunks_fts MATCH :m"),
                            {"m": "text : " + _phrase(term)},
                        )
                    ).scalar_one()
                )
        if generation == self._generation:  # nothing was written meanwhile: the counts may be cached
            self._rows = rows
            self._df.update(df)
        return rows, df

    async def keyword_candidates(
        self,
        vector_store_ids: Sequence[str],
        terms: Sequence[str],
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        if not terms or (file_ids is not None and not file_ids):
            return []
        rows, df = await self._document_frequencies(terms)
        # FTS5's BM25 gives a term in half the rows or more an IDF of ~0 (it floors it at 1e-6), so
        # such terms change no score: dropping them only spares scoring the rows they alone match.
        kept = [t for t in terms if df[t] > 0 and 2 * df[t] < rows]
        if not kept:
            kept = [t for t in terms if df[t] > 0]
            if not kept:
                return []
        # Bound the rows to score: past MAX_MATCHED, the commonest of the remaining terms are left
        # out (lowest IDF, so the smallest share of any score); ranking then rests on rarer terms.
        kept.sort(key=lambda t: df[t])
        while len(kept) > 1 and sum(df[t] for t in kept) > MAX_MATCHED:
            kept.pop()
        stores = " OR ".join("vector_store_id : " + _phrase(vs) for vs in dict.fromkeys(vector_store_ids))
        match = f"({stores}) AND ({' OR '.join('text : ' + _phrase(t) for t in kept)})"
        # Column weights: the text counts, the store id column does not.
        score = "bm25(retrieval_chunks_fts, 1.0, 0.0)"
        params: dict[str, Any] = {"match": match, "k": limit}
        if file_ids is None:
            sql = (
                f"SELECT rowid, -{score} FROM retrieval_chunks_fts WHERE retrieval_chunks_fts MATCH :match "
                f"ORDER BY {score} LIMIT :k"
            )
            stmt: Any = text(sql)
        else:
            sql = (
                f"SELECT c.id, -{score} FROM retrieval_chunks_fts JOIN retrieval_chunks c "
                "ON c.id = retrieval_chunks_fts.rowid WHERE retrieval_chunks_fts MATCH :match "
                f"AND c.vector_store_id IN :vs AND c.file_id IN :files ORDER BY {score} LIMIT :k"
            )
            params["vs"] = list(vector_store_ids)
            params["files"] = list(file_ids)
            stmt = _expanding(sql, "vs", "files")
        async with self._engine.connect() as conn:
            result = await conn.execute(stmt, params)
            return [Candidate(int(r[0]), float(r[1])) for r in result]

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        if not chunk_ids:
            return {}
        async with self._engine.connect() as conn:
            result = await conn.execute(
                _expanding(f"SELECT {CHUNK_COLUMNS} WHERE c.id IN :ids", "ids"), {"ids": list(chunk_ids)}
            )
            return {int(r[0]): stored_chunk(r) for r in result}


def _phrase(value: str) -> str:
    """An FTS5 string literal: user text can then never be read as query syntax."""
    return '"' + value.replace('"', '""') + '"'


def _build_matrix(rows: Sequence[Any]) -> _StoreVectors:
    if not rows:
        return _StoreVectors(np.zeros(0, np.int64), np.zeros(0, np.int32), [], np.zeros((0, 0), np.float32))
    codes: dict[str, int] = {}
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    file_codes = np.fromiter((codes.setdefault(r[1], len(codes)) for r in rows), np.int32, len(rows))
    blob = b"".join(r[2] for r in rows)
    matrix = np.frombuffer(blob, dtype=np.float32).reshape(len(rows), -1)
    return _StoreVectors(ids, file_codes, list(codes), matrix)


def _top_k(store: _StoreVectors, query: Vectors, limit: int, file_ids: Collection[str] | None) -> list[Candidate]:
    if store.matrix.shape[0] == 0 or store.matrix.shape[1] != query.shape[0]:
        return []
    scores = store.matrix @ query
    if file_ids is not None:
        wanted = set(file_ids)
        allowed = np.array([f in wanted for f in store.file_ids], dtype=bool)
        scores = np.where(allowed[store.file_codes], scores, -np.inf)
    k = min(limit, scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return [Candidate(int(store.ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]
