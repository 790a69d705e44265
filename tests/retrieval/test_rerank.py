"""`ranking_options.ranker`: late interaction over MiniLM's stored token vectors re-scores fusion's
candidates; `none` keeps fusion's order; chunks without token vectors are never reranked.

Real indexes (SQLite and PostgreSQL), the real MiniLM runtime (weights fetched by `make venv`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from loom.errors import InvalidRequest
from loom.retrieval.chunking import chunk_text
from loom.retrieval.embedding import Embedder, Embedders, WordLlamaEmbedder
from loom.retrieval.index import ChunkIndex, query_terms
from loom.retrieval.ingest import ingest_file
from loom.retrieval.minilm import MiniLMEmbedder
from loom.retrieval.minilm_graph import HIDDEN
from loom.retrieval.pg_index import PostgresChunkIndex
from loom.retrieval.rerank import MAX_VECTORS, expand
from loom.retrieval.search import fuse, fusion_for, search
from loom.retrieval.sqlite_index import SQLiteChunkIndex
from loom.services.store_embedders import search_stores
from loom.store import tables
from loom.store.db import Database
from loom.store.migrate import migrate
from tests.retrieval.support import migration, run_migration
from tests.support.postgres import new_database

# Fusion puts a passage that repeats query words ("change", "colour") but explains nothing above the
# one that answers the question in other words (chlorophyll, pigments).
WRONG = {
    "file-shop": "Change colour change: a colour change shop for paint colour.",
    "file-answer": (
        "Shorter autumn days make trees stop producing chlorophyll, which is green, so the hidden yellow and "
        "orange pigments of the leaves become visible."
    ),
    "file-car": "The car needs new tyres before winter.",
    "file-tax": "The tax office opens at nine on weekdays.",
}
WRONG_QUERY = "why do leaves change colour in autumn"

# A clear case: fusion's first passage answers the query with its own words, well ahead of a passage
# stuffed with two of them.
CLEAR = {
    "file-guide": (
        "Setting up your home network: place the router centrally, update its firmware, and pick a strong wifi "
        "name. Forgot the admin password? To reset it, hold the reset button on the back of the router for ten "
        "seconds; the password returns to the one printed on the label. Then log in and choose a new one."
    ),
    "file-policy": "Router password policy: password length, password expiry, password history.",
    "file-weather": "Tomorrow will be sunny with a light breeze from the west.",
    "file-cable": "The router ships with one ethernet cable and a power adapter.",
}
CLEAR_QUERY = "how do I reset my router password"


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


async def _fill(index: ChunkIndex, embedder: Embedder, docs: dict[str, str], store: str = "vs_r") -> None:
    for file_id, body in docs.items():
        await ingest_file(
            index, embedder, vector_store_id=store, file_id=file_id, filename=f"{file_id}.txt", data=body.encode()
        )


async def test_the_reranker_fixes_an_order_fusion_gets_wrong(index: ChunkIndex, minilm: MiniLMEmbedder) -> None:
    await _fill(index, minilm, WRONG)
    fused = await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="none")
    assert [r.file_id for r in fused][:2] == ["file-shop", "file-answer"]
    for ranker in ("auto", "default-2024-11-15", "default_2024_08_21"):
        reranked = await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker=ranker)
        assert [r.file_id for r in reranked][:2] == ["file-answer", "file-shop"], ranker
        assert all(0.0 <= r.score <= 1.0 for r in reranked)
        assert [r.score for r in reranked] == sorted((r.score for r in reranked), reverse=True)
    # No ranker named is `auto`, as on OpenAI.
    assert (await search(index, minilm, ["vs_r"], WRONG_QUERY))[0].file_id == "file-answer"


async def test_none_keeps_fusions_order_and_scores(index: ChunkIndex, minilm: MiniLMEmbedder) -> None:
    await _fill(index, minilm, WRONG)
    got = await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="none", max_num_results=50)
    # Fusion's scores, computed here from the index's two candidate lists.
    vector = (await minilm.embed([WRONG_QUERY]))[0]
    scores = fuse(
        await index.vector_candidates(["vs_r"], vector, 100),
        await index.keyword_candidates(["vs_r"], query_terms(WRONG_QUERY), 100),
        "hybrid",
        fusion_for(minilm.name),
    )
    expected = sorted(((cid, s) for cid, s in scores.items() if s > 0), key=lambda item: (-item[1], item[0]))
    assert [(r.chunk_id, r.score) for r in got] == [(cid, round(s, 6)) for cid, s in expected]
    reranked = await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="auto", max_num_results=50)
    assert {r.chunk_id for r in reranked} == {r.chunk_id for r in got}
    assert [r.chunk_id for r in reranked] != [r.chunk_id for r in got]


async def test_threshold_applies_to_the_final_scores(index: ChunkIndex, minilm: MiniLMEmbedder) -> None:
    await _fill(index, minilm, WRONG)
    fused = {r.file_id: r.score for r in await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="none")}
    final = {r.file_id: r.score for r in await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="auto")}
    # A cut between the two final scores, which the shop's *fused* score passes.
    cut = (final["file-shop"] + final["file-answer"]) / 2
    assert fused["file-shop"] >= cut > final["file-shop"]
    kept = await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="auto", score_threshold=cut)
    assert [r.file_id for r in kept] == ["file-answer"]
    assert all(r.score >= cut for r in kept)
    unranked = await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="none", score_threshold=cut)
    assert "file-shop" in [r.file_id for r in unranked]


async def test_a_clear_case_is_not_overruled(index: ChunkIndex, minilm: MiniLMEmbedder) -> None:
    await _fill(index, minilm, CLEAR)
    fused = await search(index, minilm, ["vs_r"], CLEAR_QUERY, ranker="none")
    reranked = await search(index, minilm, ["vs_r"], CLEAR_QUERY, ranker="auto")
    assert fused[0].file_id == "file-guide" and fused[0].score - fused[1].score > 0.1
    assert reranked[0].file_id == "file-guide"
    assert reranked[0].score > reranked[1].score


async def test_stores_without_token_vectors_keep_fusions_order(
    index: ChunkIndex, embedder: WordLlamaEmbedder, minilm: MiniLMEmbedder
) -> None:
    # A store built by wordllama: no token vectors, still searched, never reranked.
    await _fill(index, embedder, WRONG, store="vs_w")
    assert await index.late_tokens([r.chunk_id for r in await search(index, embedder, ["vs_w"], WRONG_QUERY)]) == {}
    for query in (WRONG_QUERY, "autumn leaves"):
        fused = await search(index, embedder, ["vs_w"], query, ranker="none")
        auto = await search(index, embedder, ["vs_w"], query, ranker="auto")
        assert fused and [(r.chunk_id, r.score) for r in auto] == [(r.chunk_id, r.score) for r in fused]
    # A MiniLM store whose chunks were written without token vectors (before migration 0012).
    for file_id, body in WRONG.items():
        chunks = chunk_text(body)
        await index.put_file("vs_old", file_id, f"{file_id}.txt")
        await index.add_chunks("vs_old", file_id, chunks, await minilm.embed([c.text for c in chunks]))
    fused = await search(index, minilm, ["vs_old"], WRONG_QUERY, ranker="none")
    auto = await search(index, minilm, ["vs_old"], WRONG_QUERY, ranker="auto")
    assert [r.file_id for r in fused][:2] == ["file-shop", "file-answer"]
    assert [(r.chunk_id, r.score) for r in auto] == [(r.chunk_id, r.score) for r in fused]


async def test_minilm_ingestion_stores_compact_token_vectors(index: ChunkIndex, minilm: MiniLMEmbedder) -> None:
    long = " ".join(f"Sentence {i} about glaciers, rivers and sediment in valley number {i}." for i in range(30))
    await _fill(index, minilm, {"file-long": long, "file-short": "Glaciers carve valleys."})
    chunks = await index.file_chunks("vs_r", "file-long") + await index.file_chunks("vs_r", "file-short")
    blobs = await index.late_tokens([c.chunk_id for c in chunks])
    assert set(blobs) == {c.chunk_id for c in chunks}
    for c in chunks:
        vectors = expand(blobs[c.chunk_id])
        assert vectors.shape[1] == HIDDEN and 1 <= len(vectors) <= MAX_VECTORS
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=0.02)  # unit vectors, int8 rounding
        assert len(blobs[c.chunk_id]) == 3 + len(vectors) * (4 + HIDDEN)
    long_chunk = next(c for c in chunks if c.file_id == "file-long")
    assert len(expand(blobs[long_chunk.chunk_id])) == MAX_VECTORS  # many pieces pooled into 32
    # "Glaciers carve valleys.": [CLS] and [SEP] and the full stop dropped, the word pieces kept.
    short = next(c for c in chunks if c.file_id == "file-short")
    assert 3 <= len(expand(blobs[short.chunk_id])) <= 6


async def test_unknown_ranker_is_refused(index: ChunkIndex, minilm: MiniLMEmbedder) -> None:
    with pytest.raises(InvalidRequest) as err:
        await search(index, minilm, ["vs_r"], WRONG_QUERY, ranker="bm42")
    assert err.value.param == "ranking_options.ranker"


@pytest.fixture(params=["sqlite", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else new_database("rerank")
    eng = create_async_engine(url)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _columns(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = await conn.execute(text("PRAGMA table_info(retrieval_chunks)"))
            return {str(r[1]) for r in rows}
        rows = await conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = 'retrieval_chunks'")
        )
        return {str(r[0]) for r in rows}


async def test_migration_0012_adds_the_column_and_old_chunks_keep_fusions_order(
    engine: AsyncEngine, minilm: MiniLMEmbedder
) -> None:
    index: ChunkIndex = SQLiteChunkIndex(engine) if engine.dialect.name == "sqlite" else PostgresChunkIndex(engine)
    await index.create_schema()
    await _fill(index, minilm, WRONG)
    rev = migration("0012_late_tokens.py")
    async with engine.begin() as conn:
        await conn.run_sync(run_migration, rev, "downgrade")
    assert "late_tokens" not in await _columns(engine)
    async with engine.begin() as conn:
        await conn.run_sync(run_migration, rev, "upgrade")
        await conn.run_sync(run_migration, rev, "upgrade")  # idempotent
    assert "late_tokens" in await _columns(engine)
    # The chunks stored before the upgrade have no token vectors: searched, not reranked.
    fresh = SQLiteChunkIndex(engine) if engine.dialect.name == "sqlite" else PostgresChunkIndex(engine)
    fused = await search(fresh, minilm, ["vs_r"], WRONG_QUERY, ranker="none")
    auto = await search(fresh, minilm, ["vs_r"], WRONG_QUERY, ranker="auto")
    assert await fresh.late_tokens([r.chunk_id for r in fused]) == {}
    assert [(r.chunk_id, r.score) for r in auto] == [(r.chunk_id, r.score) for r in fused]
    # Indexing the files again stores them: reranked from then on.
    await _fill(fresh, minilm, WRONG)
    assert (await search(fresh, minilm, ["vs_r"], WRONG_QUERY, ranker="auto"))[0].file_id == "file-answer"


async def test_stores_of_two_embedders_searched_together_are_all_ranked_by_fusion(
    tmp_path: Path, minilm: MiniLMEmbedder
) -> None:
    """A MiniLM store (reranked alone) and a wordllama store (never reranked), searched together: their
    results are merged by score, so both keep fusion's scores (a reranked score against a fused one
    would rank two kinds of score against each other)."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'two.db'}")
    try:
        await migrate(db.engine)
        index = SQLiteChunkIndex(db.engine)
        wordllama = WordLlamaEmbedder()
        embedders = Embedders(None, default=minilm)
        async with db.write() as conn:
            for store, name in (("vs_m", minilm.name), ("vs_w", wordllama.name)):
                await conn.execute(
                    sa.insert(tables.vector_stores).values(id=store, project="p", created_at=0, data={}, embedder=name)
                )
        await _fill(index, minilm, WRONG, "vs_m")
        await _fill(index, wordllama, CLEAR, "vs_w")
        both = await search_stores(db, index, embedders, ["vs_m", "vs_w"], [WRONG_QUERY], ranker="auto")
        fused = {
            (r.vector_store_id, r.file_id): r.score
            for store, embedder in (("vs_m", minilm), ("vs_w", wordllama))
            for r in await search(index, embedder, [store], WRONG_QUERY, ranker="none")
        }
        reranked = {r.file_id: r.score for r in await search(index, minilm, ["vs_m"], WRONG_QUERY, ranker="auto")}
        assert {r.vector_store_id for r in both} == {"vs_m", "vs_w"}
        assert [((r.vector_store_id, r.file_id), r.score) for r in both] == sorted(
            fused.items(), key=lambda item: -item[1]
        )[: len(both)]
        assert any(reranked[f] != s for (store, f), s in fused.items() if store == "vs_m")  # it would differ
        # One embedder's stores alone are still reranked.
        alone = await search_stores(db, index, embedders, ["vs_m"], [WRONG_QUERY], ranker="auto")
        assert {r.file_id: r.score for r in alone} == reranked
    finally:
        await db.dispose()
