"""One model per store: an index refuses vectors of another size than the store already holds."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from loom.retrieval.chunking import Chunk
from loom.retrieval.errors import IndexingFailed
from loom.retrieval.index import ChunkIndex
from loom.retrieval.pg_index import PostgresChunkIndex
from tests.support.postgres import new_database


def _chunks(n: int, dims: int) -> tuple[list[Chunk], np.ndarray]:
    vectors = np.random.default_rng(dims).normal(size=(n, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Chunk(i, f"text {i}", 0, 6, 2) for i in range(n)], vectors


async def test_a_store_refuses_a_second_embedding_size(index: ChunkIndex) -> None:
    await index.put_file("vs_a", "file-1", "a.txt")
    await index.add_chunks("vs_a", "file-1", *_chunks(2, 256))
    await index.put_file("vs_a", "file-2", "b.txt")
    with pytest.raises(IndexingFailed, match="holds 256-dimensional vectors; refusing to add 384-dimensional"):
        await index.add_chunks("vs_a", "file-2", *_chunks(2, 384))
    # Another store may use another model, and each is searched with its own vectors.
    await index.put_file("vs_b", "file-1", "c.txt")
    chunks, vectors = _chunks(3, 384)
    await index.add_chunks("vs_b", "file-1", chunks, vectors)
    found = await index.vector_candidates(["vs_b"], vectors[1], 3)
    assert len(found) == 3 and found[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(await index.vector_candidates(["vs_a"], _chunks(1, 256)[1][0], 3)) == 2


async def test_postgres_builds_the_hnsw_index_of_a_new_size() -> None:
    engine = create_async_engine(new_database("dims"))
    try:
        index = PostgresChunkIndex(engine)  # the schema's own index is the 256-dimensional one
        await index.create_schema()
        await index.put_file("vs_new", "file-1", "a.txt")
        await index.add_chunks("vs_new", "file-1", *_chunks(2, 384))
        async with engine.connect() as conn:
            names = {r[0] for r in await conn.execute(text("SELECT indexname FROM pg_indexes"))}
        assert {"retrieval_chunks_hnsw_256", "retrieval_chunks_hnsw_384"} <= names
    finally:
        await engine.dispose()
