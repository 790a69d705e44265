"""SQLite index: exact vector search with numpy over float32 blobs, exact BM25 over in-memory postings.

Each store's vectors and keyword postings (`bm25.Postings`, from the per-chunk keyword columns that
`add_chunks` fills) are loaded in one scan and cached in-process; BM25's statistics are the
searched stores' own. `add_chunks` hands its batch to a cached store, appended at the next search
(a new postings segment, merged with the one before while it is at least half that one's size, so
a store holds O(log n) segments); a deleted file is masked out of them, and a segment is compacted
once a quarter of it is deleted (or when merged), so neither write reloads the store. SQLite
deployments are one process, so the cache cannot go stale elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine

from loom.retrieval.analysis import TERM_DTYPE, TF_DTYPE, Encoded, encode, query_hashes
from loom.retrieval.bm25 import Postings
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
from loom.retrieval.schema import create_schema
from loom.retrieval.topk import top_k


@dataclass(slots=True)
class _StoreVectors:
    ids: npt.NDArray[np.int64]
    file_codes: npt.NDArray[np.int32]
    file_ids: list[str]  # code -> file id
    matrix: Vectors
    segments: list[Postings] = field(default_factory=list)  # the store's keyword postings, in parts
    # Rows of deleted files still in `matrix` (None: none), left out of vector search until compacted.
    gone: npt.NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class _Batch:
    """Chunks added to a cached store, not yet in its cache entry."""

    ids: list[int]
    file_id: str
    encoded: list[Encoded]
    vectors: Vectors


@dataclass(frozen=True, slots=True)
class _Removal:
    """A file deleted from a cached store, not yet out of its cache entry."""

    file_id: str


# A store's postings segment is compacted (its removed docs dropped) once they are this share of it.
COMPACT_SHARE = 0.25
# Rows read per batch when a store is loaded.
LOAD_BATCH = 4096


def _expanding(sql: str, *names: str) -> Any:
    return text(sql).bindparams(*(bindparam(n, expanding=True) for n in names))


class SQLiteChunkIndex:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._cache: dict[str, _StoreVectors] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Per store: the writes (added batches, deleted files) since its cache entry was built, in
        # order; a count of every write (a load that saw one happen is not cached) and of resets (an
        # update of the entry that saw one is not cached).
        self._pending: dict[str, list[_Batch | _Removal]] = {}
        self._writes: dict[str, int] = {}
        self._resets: dict[str, int] = {}

    async def create_schema(self) -> None:
        async with self._engine.begin() as conn:
            await create_schema(conn, "sqlite")

    def _invalidate(self, vector_store_id: str) -> None:
        self._cache.pop(vector_store_id, None)
        self._pending.pop(vector_store_id, None)
        self._writes[vector_store_id] = self._writes.get(vector_store_id, 0) + 1
        self._resets[vector_store_id] = self._resets.get(vector_store_id, 0) + 1

    def _appended(self, vector_store_id: str, batch: _Batch | _Removal) -> None:
        self._writes[vector_store_id] = self._writes.get(vector_store_id, 0) + 1
        if vector_store_id in self._cache:
            self._pending.setdefault(vector_store_id, []).append(batch)

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
        encoded = await asyncio.to_thread(lambda: [encode(c.text) for c in chunks])
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
                "kt": k.terms,
                "kf": k.tfs,
                "kl": k.length,
                "lt": lt,
            }
            for c, v, k, lt in zip(chunks, vectors, encoded, late, strict=True)
        ]
        async with self._engine.begin() as conn:
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
            before = int((await conn.execute(text("SELECT coalesce(max(id), 0) FROM retrieval_chunks"))).scalar_one())
            await conn.execute(
                text(
                    "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, "
                    f"end_offset, token_count, text, embedding, kw_terms, kw_tfs, kw_len{', late_tokens' if with_late else ''}) "
                    f"VALUES (:vs, :f, :i, :s, :e, :t, :text, :emb, :kt, :kf, :kl{', :lt' if with_late else ''})"
                ),
                rows,
            )
            # New rows get ids past the largest (no AUTOINCREMENT), in insertion order; this
            # transaction holds SQLite's write lock, so the rows past `before` are this batch's.
            result = await conn.execute(
                text("SELECT id FROM retrieval_chunks WHERE id > :before ORDER BY id"), {"before": before}
            )
            ids = [int(r[0]) for r in result]
        if len(ids) == len(rows):
            self._appended(vector_store_id, _Batch(ids, file_id, encoded, np.asarray(vectors, dtype=np.float32)))
        else:
            self._invalidate(vector_store_id)

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                text("DELETE FROM retrieval_chunks WHERE vector_store_id = :vs AND file_id = :f"),
                {"vs": vector_store_id, "f": file_id},
            )
            await conn.execute(DELETE_FILE_ENTRY, {"vs": vector_store_id, "f": file_id})
        self._appended(vector_store_id, _Removal(file_id))
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
        if cached is not None and not self._pending.get(vector_store_id):
            return cached
        lock = self._locks.setdefault(vector_store_id, asyncio.Lock())
        async with lock:
            cached = self._cache.get(vector_store_id)
            if cached is not None:
                # The writes stay pending until applied: a search meanwhile waits here (the check above
                # sees them) instead of reading the entry as it was before them.
                pending = self._pending.get(vector_store_id, [])
                batches = list(pending)
                if not batches:
                    return cached
                resets = self._resets.get(vector_store_id, 0)
                grown = await asyncio.to_thread(_apply, cached, batches)
                if resets == self._resets.get(vector_store_id, 0):  # not invalidated meanwhile
                    self._cache[vector_store_id] = grown
                    del pending[: len(batches)]  # writes made during the update stay pending
                    if not pending:
                        self._pending.pop(vector_store_id, None)
                return grown
            writes = self._writes.get(vector_store_id, 0)
            # Streamed: each batch of rows becomes arrays (off the event loop) and is freed, so the
            # rows' blobs are never all held at once as Python objects.
            codes: dict[str, int] = {}
            parts: list[_Part] = []
            async with self._engine.connect() as conn:
                result = await conn.stream(
                    text(
                        "SELECT id, file_id, embedding, kw_terms, kw_tfs, kw_len FROM retrieval_chunks "
                        "WHERE vector_store_id = :vs ORDER BY id"
                    ),
                    {"vs": vector_store_id},
                )
                async for rows in result.partitions(LOAD_BATCH):
                    parts.append(await asyncio.to_thread(_load_part, rows, codes))
            loaded = await asyncio.to_thread(_build_store, parts, list(codes))
            del parts
            if writes == self._writes.get(vector_store_id, 0):  # no write since the scan began
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

    async def keyword_candidates(
        self,
        vector_store_ids: Sequence[str],
        terms: Sequence[str],
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]:
        """Exact BM25 top `limit` over the stores' postings, with the statistics of these stores only."""
        if not terms or (file_ids is not None and not file_ids):
            return []
        hashes = query_hashes(terms)
        segments = [p for vs in dict.fromkeys(vector_store_ids) for p in (await self._store_vectors(vs)).segments]
        allowed = None if file_ids is None else frozenset(file_ids)
        return await asyncio.to_thread(top_k, segments, hashes, limit, allowed)

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        if not chunk_ids:
            return {}
        async with self._engine.connect() as conn:
            result = await conn.execute(
                _expanding(f"SELECT {CHUNK_COLUMNS} WHERE c.id IN :ids", "ids"), {"ids": list(chunk_ids)}
            )
            return {int(r[0]): stored_chunk(r) for r in result}

    async def late_tokens(self, chunk_ids: Collection[int]) -> dict[int, bytes]:
        if not chunk_ids:
            return {}
        async with self._engine.connect() as conn:
            result = await conn.execute(
                _expanding("SELECT id, late_tokens FROM retrieval_chunks WHERE id IN :ids", "ids"),
                {"ids": list(chunk_ids)},
            )
            return {int(r[0]): bytes(r[1]) for r in result if r[1] is not None}


@dataclass(frozen=True, slots=True)
class _Part:
    """A batch of a store's rows as arrays (`_load_part`)."""

    ids: npt.NDArray[np.int64]
    file_codes: npt.NDArray[np.int32]
    matrix: Vectors
    terms: npt.NDArray[np.uint64]
    tfs: npt.NDArray[np.uint16]
    widths: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]


def _load_part(rows: Sequence[Any], codes: dict[str, int]) -> _Part:
    """Rows (id, file id, embedding, kw_terms, kw_tfs, kw_len) as arrays; `codes` numbers the files
    (extended with new ones)."""
    n = len(rows)
    terms = [r[3] or b"" for r in rows]
    return _Part(
        ids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=n),
        file_codes=np.fromiter((codes.setdefault(r[1], len(codes)) for r in rows), np.int32, n),
        matrix=np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(n, -1),
        terms=np.frombuffer(b"".join(terms), dtype=TERM_DTYPE),
        tfs=np.frombuffer(b"".join(r[4] or b"" for r in rows), dtype=TF_DTYPE),
        widths=np.fromiter((len(t) for t in terms), dtype=np.int64, count=n) // TERM_DTYPE.itemsize,
        lengths=np.fromiter((r[5] or 0 for r in rows), dtype=np.int64, count=n),
    )


def _build_store(parts: list[_Part], file_ids: list[str]) -> _StoreVectors:
    """The cache entry from a store's rows loaded in parts (emptied as they are joined)."""
    if not parts:
        return _StoreVectors(np.zeros(0, np.int64), np.zeros(0, np.int32), [], np.zeros((0, 0), np.float32))

    def joined(name: str) -> npt.NDArray[Any]:
        return _joined([getattr(p, name) for p in parts])

    ids, file_codes, matrix = joined("ids"), joined("file_codes"), joined("matrix")
    terms, tfs, widths, lengths = joined("terms"), joined("tfs"), joined("widths"), joined("lengths")
    parts.clear()  # the parts' arrays go as soon as the joined ones hold them
    postings = Postings.from_arrays(terms, tfs, widths, ids, file_codes, lengths, file_ids)
    return _StoreVectors(ids, file_codes, file_ids, matrix, [postings])


def _apply(store: _StoreVectors, writes: Sequence[_Batch | _Removal]) -> _StoreVectors:
    """The store with these writes applied, in order: a new entry (searches running on the old one go
    on). An added batch becomes a postings segment; a deleted file is masked out of the segments
    (`Postings.remove`: BM25 stays exact without a rebuild) and of the vector rows (`gone`), each
    compacted once a quarter of it is deleted."""
    file_ids = list(store.file_ids)
    codes = {f: i for i, f in enumerate(file_ids)}
    segments = list(store.segments)
    ids, file_codes = [store.ids], [store.file_codes]
    gone = [store.gone if store.gone is not None else np.zeros(store.ids.shape[0], dtype=bool)]
    matrices = [store.matrix] if store.matrix.size else []
    for b in writes:
        if isinstance(b, _Removal):
            code = codes.get(b.file_id)
            if code is None:
                continue
            segments = [q for q in (_compacted(p.remove(p.file_codes == code)) for p in segments) if q.size]
            ids, file_codes = [_joined(ids)], [_joined(file_codes)]
            gone = [_joined(gone) | (file_codes[0] == code)]
            if int(gone[0].sum()) > COMPACT_SHARE * gone[0].shape[0]:
                keep = ~gone[0]
                ids, file_codes, gone = [ids[0][keep]], [file_codes[0][keep]], [gone[0][keep]]
                matrices = [_joined(matrices)[keep]] if matrices else []
            continue
        code = codes.setdefault(b.file_id, len(codes))
        if code == len(file_ids):
            file_ids.append(b.file_id)
        rows = [(i, code, e.terms, e.tfs, e.length) for i, e in zip(b.ids, b.encoded, strict=True)]
        segments.append(Postings.build(rows, file_ids))
        ids.append(np.asarray(b.ids, dtype=np.int64))
        file_codes.append(np.full(len(b.ids), code, dtype=np.int32))
        gone.append(np.zeros(len(b.ids), dtype=bool))
        matrices.append(b.vectors)
        # Merge while the newest segment is at least half its predecessor: sizes stay geometric, so
        # a store has O(log n) segments and each posting is re-sorted O(log n) times.
        while len(segments) > 1 and 2 * segments[-1].size >= segments[-2].size:
            last = segments.pop()
            segments[-1] = Postings.merge([segments[-1], last], file_ids)
    matrix = _joined(matrices) if matrices else np.zeros((0, 0), np.float32)
    removed = _joined(gone)
    return _StoreVectors(
        _joined(ids), _joined(file_codes), file_ids, matrix, segments, removed if removed.any() else None
    )


def _joined(parts: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _compacted(part: Postings) -> Postings:
    return part.compact() if part.removed_docs > COMPACT_SHARE * part.size else part


def _top_k(store: _StoreVectors, query: Vectors, limit: int, file_ids: Collection[str] | None) -> list[Candidate]:
    if store.matrix.shape[0] == 0 or store.matrix.shape[1] != query.shape[0]:
        return []
    scores = store.matrix @ query
    if store.gone is not None:
        scores[store.gone] = -np.inf
    if file_ids is not None:
        wanted = set(file_ids)
        allowed = np.array([f in wanted for f in store.file_ids], dtype=bool)
        scores = np.where(allowed[store.file_codes], scores, -np.inf)
    k = min(limit, scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top])]
    return [Candidate(int(store.ids[i]), float(scores[i])) for i in top if np.isfinite(scores[i])]
