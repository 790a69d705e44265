"""A chunk index whose writes take their turn with the process's other SQLite writers."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from loom.retrieval.chunking import Chunk
from loom.retrieval.embedding import Vectors
from loom.retrieval.index import Candidate, ChunkIndex, FileEntry, StoredChunk
from loom.store.db import Database


class SerializedWrites:
    """A ChunkIndex whose writes queue with this process's other SQLite writers.

    SQLite has one writer. The index writes through its own threaded engine, so it takes this
    process's writers' turn (`Database.writer_turn`: the lock without a transaction of its own, which
    would hold SQLite's write lock the index then waits for) and API writes never wait on it. On
    PostgreSQL the turn is free (`writer_turn` takes no lock there): the calls just pass through.
    """

    def __init__(self, inner: ChunkIndex, db: Database) -> None:
        self.inner = inner
        self.db = db

    async def create_schema(self) -> None:
        async with self.db.writer_turn():
            await self.inner.create_schema()

    async def put_file(
        self, vector_store_id: str, file_id: str, filename: str, attributes: Mapping[str, Any] | None = None
    ) -> None:
        async with self.db.writer_turn():
            await self.inner.put_file(vector_store_id, file_id, filename, attributes)

    async def set_attributes(self, vector_store_id: str, file_id: str, attributes: Mapping[str, Any] | None) -> None:
        async with self.db.writer_turn():
            await self.inner.set_attributes(vector_store_id, file_id, attributes)

    async def add_chunks(
        self,
        vector_store_id: str,
        file_id: str,
        chunks: Sequence[Chunk],
        vectors: Vectors,
        late_tokens: Sequence[bytes | None] | None = None,
    ) -> None:
        async with self.db.writer_turn():
            await self.inner.add_chunks(vector_store_id, file_id, chunks, vectors, late_tokens)

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        async with self.db.writer_turn():
            return await self.inner.delete_file(vector_store_id, file_id)

    async def delete_store(self, vector_store_id: str) -> int:
        async with self.db.writer_turn():
            return await self.inner.delete_store(vector_store_id)

    async def list_files(self, vector_store_ids: Sequence[str]) -> list[FileEntry]:
        return await self.inner.list_files(vector_store_ids)

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[StoredChunk]:
        return await self.inner.file_chunks(vector_store_id, file_id)

    async def vector_candidates(
        self, vector_store_ids: Sequence[str], vector: Vectors, limit: int, file_ids: Collection[str] | None = None
    ) -> list[Candidate]:
        return await self.inner.vector_candidates(vector_store_ids, vector, limit, file_ids)

    async def keyword_candidates(
        self, vector_store_ids: Sequence[str], terms: Sequence[str], limit: int, file_ids: Collection[str] | None = None
    ) -> list[Candidate]:
        return await self.inner.keyword_candidates(vector_store_ids, terms, limit, file_ids)

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]:
        return await self.inner.get_chunks(chunk_ids)

    async def late_tokens(self, chunk_ids: Collection[int]) -> dict[int, bytes]:
        return await self.inner.late_tokens(chunk_ids)
