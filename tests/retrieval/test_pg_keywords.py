"""PostgreSQL keyword search (`loom.retrieval.pg_keywords`): the exact BM25 top k however large the
store, kept fresh across replicas by per-store generations, and the same after migration 0011."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from loom.retrieval import pg_keywords, topk
from loom.retrieval.analysis import Encoded, encode, query_hashes
from loom.retrieval.bm25 import Postings, rank
from loom.retrieval.index import Candidate
from loom.retrieval.pg_index import PostgresChunkIndex
from loom.retrieval.schema import schema_statements, term_stats_statements
from loom.retrieval.topk import top_k
from tests.retrieval.support import brute_bm25, chunks_with_vectors, migration, run_migration
from tests.support.postgres import new_database

FILLER = ["apple", "river", "stone", "cloud", "maple", "tiger", "lemon", "piano", "cedar", "amber"]


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(new_database("kw"))
    try:
        yield eng
    finally:
        await eng.dispose()


def brute_force(docs: dict[int, str], query: list[str], limit: int) -> list[tuple[int, float]]:
    """The reference BM25 over every document, as (chunk id, score) pairs."""
    return _pairs(brute_bm25({i: ("", t) for i, t in docs.items()}, query, limit))


async def _texts(engine: AsyncEngine, store: str) -> dict[int, str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, text FROM retrieval_chunks WHERE vector_store_id = :vs"), {"vs": store}
        )
        return {int(r[0]): str(r[1]) for r in rows}


def _pairs(found: list[Candidate]) -> list[tuple[int, float]]:
    return [(c.chunk_id, c.score) for c in found]


def _same(got: list[Candidate], want: list[tuple[int, float]]) -> None:
    assert [c.chunk_id for c in got] == [i for i, _ in want]
    assert [c.score for c in got] == pytest.approx([s for _, s in want], rel=1e-9)


def _large_store(rows: int) -> list[str]:
    """Every chunk holds "beta" (a few of them many times, in short chunks: BM25's top); every 300th
    holds "alpha" once, in a long chunk. A planner that starts from the rarer term and stops before
    scoring most of the store (the old MAX_SCORED cap at 5000 chunks) misses the top."""
    texts = []
    for i in range(rows):
        if i % 300 == 0:
            texts.append(" ".join(["alpha", "beta"] + [FILLER[(i + j) % 10] for j in range(40)]))
        elif i % 97 == 0:
            texts.append(" ".join(["beta"] * (2 + i % 5) + [FILLER[i % 10]] * (i % 3)))
        else:
            texts.append(" ".join(["beta"] + [FILLER[(i * 3 + j) % 10] for j in range(8 + i % 7)]))
    return texts


async def test_large_store_ranks_exactly(engine: AsyncEngine) -> None:
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.create_schema()
    texts = _large_store(6000)
    for k in range(0, len(texts), 2000):  # three files
        await index.put_file("vs_a", f"file-{k}", "a.txt")
        await index.add_chunks("vs_a", f"file-{k}", *chunks_with_vectors(texts[k : k + 2000]))
    docs = await _texts(engine, "vs_a")
    for query, limit in [(["alpha", "beta"], 10), (["beta"], 50), (["alpha", "beta", "maple"], 100), (["alpha"], 5)]:
        _same(await index.keyword_candidates(["vs_a"], query, limit), brute_force(docs, query, limit))
    # Filtered to one file: the exact top of that file's chunks (statistics still the store's).
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id FROM retrieval_chunks WHERE file_id = 'file-2000'"))
        allowed = {int(r[0]) for r in rows}
    want = [p for p in brute_force(docs, ["alpha", "beta"], len(docs)) if p[0] in allowed][:10]
    _same(await index.keyword_candidates(["vs_a"], ["alpha", "beta"], 10, file_ids=["file-2000"]), want)


async def test_a_write_through_one_replica_is_seen_by_the_other(engine: AsyncEngine) -> None:
    one = PostgresChunkIndex(engine, dimensions=8)
    two = PostgresChunkIndex(engine, dimensions=8)
    await one.create_schema()
    await one.put_file("vs_a", "file-1", "a.txt")
    await one.add_chunks("vs_a", "file-1", *chunks_with_vectors(["lava and ash", "whales sing", "volcanic lava flows"]))
    assert len(await two.keyword_candidates(["vs_a"], ["lava"], 10)) == 2
    cached = two.keywords.cached("vs_a")
    assert cached is not None

    # Adds through the other replica: loaded as deltas (the cached generation moves on).
    for k in range(2, 7):
        await one.put_file("vs_a", f"file-{k}", "b.txt")
        await one.add_chunks(
            "vs_a", f"file-{k}", *chunks_with_vectors([f"lava lava {FILLER[k]}", f"{FILLER[k]} whales"] * k)
        )
        found = await two.keyword_candidates(["vs_a"], ["lava", "whales"], 100)
        generation = two.keywords.cached("vs_a")
        assert generation is not None and generation > cached
        cached = generation
        docs = await _texts(engine, "vs_a")
        _same(found, brute_force(docs, ["lava", "whales"], 100))
    # A replica loading the store at once ranks it the same as the one that took deltas.
    fresh = PostgresChunkIndex(engine, dimensions=8)
    want = _pairs(await two.keyword_candidates(["vs_a"], ["lava", "whales"], 100))
    _same(await fresh.keyword_candidates(["vs_a"], ["lava", "whales"], 100), want)

    # A delete through the other replica: the store is reloaded, the file's chunks are gone.
    assert await one.delete_file("vs_a", "file-1") == 3
    found = await two.keyword_candidates(["vs_a"], ["lava", "whales"], 100)
    docs = await _texts(engine, "vs_a")
    _same(found, brute_force(docs, ["lava", "whales"], 100))
    assert await two.keyword_candidates(["vs_a"], ["volcanic"], 10) == []

    # The whole store deleted, then made again under the same id: nothing of the old one is left.
    await one.delete_store("vs_a")
    assert await two.keyword_candidates(["vs_a"], ["lava"], 10) == []
    await one.put_file("vs_a", "file-9", "c.txt")
    await one.add_chunks("vs_a", "file-9", *chunks_with_vectors(["lava again"]))
    assert await two.keyword_candidates(["vs_a"], ["whales"], 10) == []
    assert len(await two.keyword_candidates(["vs_a"], ["lava"], 10)) == 1


async def test_ranking_starts_on_the_cache_while_the_generations_are_read(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.create_schema()
    await index.put_file("vs_a", "file-1", "a.txt")
    await index.add_chunks(
        "vs_a", "file-1", *chunks_with_vectors(["lava and ash", "whales sing", "volcanic lava flows"])
    )
    assert len(await index.keyword_candidates(["vs_a"], ["lava"], 10)) == 2  # loads the store
    calls: list[int] = []
    started = threading.Event()
    real_generations = index.keywords._generations

    def top_k(*args: Any, **kwargs: Any) -> list[Candidate]:
        calls.append(1)
        started.set()
        return topk.top_k(*args, **kwargs)

    async def generations(stores: Sequence[str]) -> dict[str, int]:
        # Read only once the ranking has started: were it to wait for this read, the search would hang.
        assert await asyncio.wait_for(asyncio.to_thread(started.wait, 10), 20)
        return await real_generations(stores)

    monkeypatch.setattr(pg_keywords, "top_k", top_k)
    monkeypatch.setattr(index.keywords, "_generations", generations)
    docs = await _texts(engine, "vs_a")
    _same(await index.keyword_candidates(["vs_a"], ["lava"], 10), brute_force(docs, ["lava"], 10))
    assert len(calls) == 1

    # A write since: the guess ranked the old postings and is discarded; the search ranks the new ones.
    await index.put_file("vs_a", "file-2", "b.txt")
    await index.add_chunks("vs_a", "file-2", *chunks_with_vectors(["lava lava lava"]))
    calls.clear()
    started.clear()
    docs = await _texts(engine, "vs_a")
    _same(await index.keyword_candidates(["vs_a"], ["lava"], 10), brute_force(docs, ["lava"], 10))
    assert len(calls) == 2 and len(docs) == 4
    # A store found stale is not guessed on next time (a store written often would rank twice a search)...
    monkeypatch.setattr(index.keywords, "_generations", real_generations)
    calls.clear()
    assert len(await index.keyword_candidates(["vs_a"], ["lava"], 10)) == 3
    assert len(calls) == 1
    # ...and is again once found fresh.
    monkeypatch.setattr(index.keywords, "_generations", generations)
    calls.clear()
    started.clear()
    assert len(await index.keyword_candidates(["vs_a"], ["lava"], 10)) == 3
    assert len(calls) == 1


async def test_searches_cancelled_mid_query_leave_every_pooled_connection_usable() -> None:
    """A search's reads use the pooled connections' asyncpg connections directly: one cancelled mid-query
    (a client gone, the other side of a hybrid search failed) must not go back to the pool in a state
    asyncpg and the server disagree on (a transaction one of them believes open)."""
    engine = create_async_engine(new_database("kw"), pool_size=3, max_overflow=0)
    try:
        index = PostgresChunkIndex(engine, dimensions=8)
        await index.create_schema()
        await index.put_file("vs_a", "file-1", "a.txt")
        await index.add_chunks("vs_a", "file-1", *chunks_with_vectors([f"lava {i} ash" for i in range(2000)]))
        rng = np.random.default_rng(5)
        cancelled = 0
        for i in range(150):
            vector = rng.standard_normal(8).astype(np.float32)
            step = (
                index.vector_candidates(["vs_a"], vector, 10)
                if i % 3 == 0
                else index.get_chunks(list(range(1, 50)))
                if i % 3 == 1
                else index.keyword_candidates(["vs_a"], ["lava"], 10)
            )
            task = asyncio.ensure_future(step)
            await asyncio.sleep(float(rng.random()) * 0.003)
            cancelled += task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert cancelled > 100
        for _ in range(10):  # each round takes all three connections at once
            found = await asyncio.gather(
                *(index.vector_candidates(["vs_a"], rng.standard_normal(8).astype(np.float32), 10) for _ in range(3))
            )
            assert [len(f) for f in found] == [10, 10, 10]
            async with engine.begin() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_the_cache_keeps_within_its_bound(engine: AsyncEngine) -> None:
    index = PostgresChunkIndex(engine, dimensions=8, keyword_cache_bytes=1)
    await index.create_schema()
    for store in ("vs_a", "vs_b"):
        await index.put_file(store, "file-1", "a.txt")
        await index.add_chunks(store, "file-1", *chunks_with_vectors(["lava and ash", "whales sing"]))
    assert len(await index.keyword_candidates(["vs_a"], ["lava"], 10)) == 1
    assert index.keywords.cached("vs_a") is not None  # the store being searched stays
    assert len(await index.keyword_candidates(["vs_b"], ["lava"], 10)) == 1
    assert index.keywords.cached("vs_a") is None  # dropped: least recently searched, over the bound
    assert index.keywords.cached("vs_b") is not None
    # Both searched together: both kept for that search, whatever the bound.
    assert len(await index.keyword_candidates(["vs_a", "vs_b"], ["lava"], 10)) == 2


async def test_a_store_migrated_by_0011_ranks_as_one_built_fresh(engine: AsyncEngine) -> None:
    rev = migration("0011_pg_keyword_columns.py")
    texts = [*_large_store(300), "Magma rises through the crust.", "Lava flows cool into basalt; ash is carried."]
    async with engine.begin() as conn:
        for statement in schema_statements("postgresql", 8) + term_stats_statements("postgresql"):
            await conn.execute(text(statement))  # the tables as they were before 0011
        # Rows as the index wrote them before 0011 (no keyword columns), and the store's statistics.
        await conn.execute(
            text(
                "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, end_offset, "
                "token_count, text, embedding, embedding_dims) SELECT 'vs_a', 'file-1', i, 0, 1, 1, t, "
                "CAST('[1,0,0,0,0,0,0,0]' AS vector), 8 FROM unnest(CAST(:t AS text[])) WITH ORDINALITY AS u(t, i)"
            ),
            {"t": texts},
        )
        await conn.execute(text("INSERT INTO retrieval_store_stats VALUES ('vs_a', :n, 0)"), {"n": len(texts)})
        await conn.run_sync(run_migration, rev, "upgrade")
    migrated = PostgresChunkIndex(engine, dimensions=8)
    fresh_engine = create_async_engine(new_database("kw"))
    try:
        fresh = PostgresChunkIndex(fresh_engine, dimensions=8)
        await fresh.create_schema()
        await fresh.put_file("vs_a", "file-1", "a.txt")
        await fresh.add_chunks("vs_a", "file-1", *chunks_with_vectors(texts))
        fresh_text = await _texts(fresh_engine, "vs_a")
        migrated_text = await _texts(engine, "vs_a")
        for query in (["alpha", "beta"], ["lava", "magma"], ["maple", "beta", "ash"]):
            got = await migrated.keyword_candidates(["vs_a"], query, 20)
            want = await fresh.keyword_candidates(["vs_a"], query, 20)
            assert got
            assert [migrated_text[c.chunk_id] for c in got] == [fresh_text[c.chunk_id] for c in want]
            assert [c.score for c in got] == pytest.approx([c.score for c in want], rel=1e-9)
        # The migrated store then takes writes like any other.
        await migrated.put_file("vs_a", "file-2", "b.txt")
        await migrated.add_chunks("vs_a", "file-2", *chunks_with_vectors(["magma magma"]))
        top = await migrated.keyword_candidates(["vs_a"], ["magma"], 1)
        assert (await _texts(engine, "vs_a"))[top[0].chunk_id] == "magma magma"
    finally:
        await fresh_engine.dispose()


def test_segments_merged_and_filtered_rank_as_one_built_at_once() -> None:
    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice([*FILLER, "lava", "ash"], size=int(rng.integers(2, 30)))) for _ in range(500)]
    rows = [(i + 1, f"file-{i % 4}", encode(t)) for i, t in enumerate(texts)]

    def built(part: list[tuple[int, str, Encoded]]) -> Postings:
        return pg_keywords._build([(i, f, e.terms, e.tfs, e.length) for i, f, e in part])

    hashes = query_hashes(["lava", "ash", "maple"])
    for allowed in (None, {"file-1", "file-2"}):
        merged = Postings.merge([built(rows[:100]), built(rows[100:350]), built(rows[350:])])
        assert top_k([merged], hashes, 50, allowed) == rank([built(rows)], hashes, 50, allowed)
        alive = np.array([i for i, f, _ in rows if i % 7 and f != "file-3"], dtype=np.int64)
        filtered = [pg_keywords.keep_only(s, alive) for s in (merged, built(rows[:100]))]
        want = [r for r in rows if r[0] in set(alive.tolist())]
        assert top_k(filtered[:1], hashes, 50, allowed) == rank([built(want)], hashes, 50, allowed)
        assert filtered[0].size == len(want)
