"""Fixtures: one real index per database (SQLite file, PostgreSQL 16 + pgvector) and the real embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from loom.retrieval.embedding import WordLlamaEmbedder
from loom.retrieval.index import ChunkIndex
from loom.retrieval.pg_index import PostgresChunkIndex
from loom.retrieval.sqlite_index import SQLiteChunkIndex
from tests.support.postgres import new_database


@pytest.fixture(scope="session")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder()


@pytest.fixture(params=["sqlite", "postgres"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChunkIndex]:
    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'retrieval.db'}")
        idx: ChunkIndex = SQLiteChunkIndex(engine)
    else:
        engine = create_async_engine(new_database("retrieval"))
        idx = PostgresChunkIndex(engine)
    await idx.create_schema()
    try:
        yield idx
    finally:
        await engine.dispose()
