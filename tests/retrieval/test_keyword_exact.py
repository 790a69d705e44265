"""Keyword search ranks by exact BM25 with the searched stores' own statistics (issue 15).

SQLite: per-store in-memory postings (`loom.retrieval.bm25`), checked against BM25 written out in
plain Python; a store's ranking and scores do not move when another store ingests (both databases).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from loom.retrieval.analysis import analyze
from loom.retrieval.chunking import Chunk
from loom.retrieval.index import Candidate, ChunkIndex
from loom.retrieval.sqlite_index import SQLiteChunkIndex
from loom.store.migrate import alembic_config
from tests.retrieval.support import brute_bm25

DIMS = 4
Doc = tuple[str, str]  # file id, text


def _chunks(texts: Sequence[str]) -> list[Chunk]:
    return [Chunk(i, t, 0, len(t), len(t.split())) for i, t in enumerate(texts)]


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIMS)).astype(np.float32)


async def _add(index: ChunkIndex, store: str, file_id: str, texts: Sequence[str], seed: int = 0) -> None:
    await index.put_file(store, file_id, f"{file_id}.txt")
    await index.add_chunks(store, file_id, _chunks(texts), _vectors(len(texts), seed))


async def _sqlite(tmp_path: Path, name: str) -> tuple[AsyncEngine, SQLiteChunkIndex]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / name}")
    index = SQLiteChunkIndex(engine)
    await index.create_schema()
    return engine, index


async def _stored(engine: AsyncEngine, store: str) -> dict[int, Doc]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT id, file_id, text FROM retrieval_chunks WHERE vector_store_id = :vs"), {"vs": store}
        )
        return {int(r[0]): (str(r[1]), str(r[2])) for r in rows}


def _same(got: Sequence[Candidate], want: Sequence[Candidate]) -> None:
    assert [c.chunk_id for c in got] == [c.chunk_id for c in want]
    assert [c.score for c in got] == pytest.approx([c.score for c in want], rel=1e-9)


MINE = [
    "the ribosome translates messenger rna into protein",
    "protein folding is assisted by chaperones",
    "kinase signalling controls cell growth",
    "a mouse model of tumour growth",
    "chaperones and heat shock proteins",
]


async def test_a_stores_ranking_and_scores_do_not_move_when_another_store_ingests(index: ChunkIndex) -> None:
    await _add(index, "vs_mine", "file-mine", MINE)
    query = ["protein", "chaperones", "growth"]
    before = await index.keyword_candidates(["vs_mine"], query, 10)
    assert len(before) >= 3
    # Another project's store: the same words, many times, in many chunks.
    other = [f"protein growth protein chaperones filler{i} growth" for i in range(300)]
    await _add(index, "vs_other", "file-other", other, seed=1)
    after = await index.keyword_candidates(["vs_mine"], query, 10)
    assert after == before  # ids and scores, exactly


async def test_scores_are_exact_bm25_of_the_searched_stores(tmp_path: Path) -> None:
    engine, index = await _sqlite(tmp_path, "a.db")
    try:
        await _add(index, "vs_mine", "file-mine", MINE)
        await _add(index, "vs_other", "file-other", [f"protein growth filler{i}" for i in range(50)], seed=1)
        mine, other = await _stored(engine, "vs_mine"), await _stored(engine, "vs_other")
        query = ["protein", "chaperones", "growth"]
        _same(await index.keyword_candidates(["vs_mine"], query, 10), brute_bm25(mine, query, 10))
        _same(await index.keyword_candidates(["vs_mine", "vs_other"], query, 10), brute_bm25(mine | other, query, 10))
    finally:
        await engine.dispose()


async def test_exact_top_k_past_twenty_thousand_matched_rows(tmp_path: Path) -> None:
    # 25,000 chunks, most holding a common query term: the former cap (20,000 matched rows) dropped
    # the commonest terms from the query; the ranking must now be BM25's over every term.
    rng = random.Random(5)
    vocab = ["cell", "protein", "growth", "signal", "binding", "receptor", "kinase", "tumour", "mouse", "rna"]
    weights = [40, 30, 20, 10, 6, 4, 2, 1, 1, 1]
    engine, index = await _sqlite(tmp_path, "b.db")
    try:
        for f in range(5):
            texts = [" ".join(rng.choices(vocab, weights, k=rng.randint(3, 12))) for _ in range(5000)]
            await _add(index, "vs_big", f"file-{f}", texts, seed=f)
        docs = await _stored(engine, "vs_big")
        for words in (["cell", "protein", "kinase"], ["cell", "growth", "signal", "mouse", "rna"], ["cell"]):
            assert sum(1 for _, t in docs.values() if set(analyze(t)) & set(analyze(" ".join(words)))) > 20000
            _same(await index.keyword_candidates(["vs_big"], words, 20), brute_bm25(docs, words, 20))
            allowed = {"file-1", "file-4"}
            _same(await index.keyword_candidates(["vs_big"], words, 20, allowed), brute_bm25(docs, words, 20, allowed))
    finally:
        await engine.dispose()


OLD_CHUNKS = [
    ("vs_a", "file-1", "Café résumés: naïve proteins FOLD_quickly"),
    ("vs_a", "file-1", "the protein folds; folding proteins fold"),
    ("vs_a", "file-2", "kinases phosphorylate proteins"),
    ("vs_b", "file-3", "protein protein protein kinase"),
    ("vs_a", "file-2", ""),
]


async def test_a_database_at_0009_upgraded_ranks_as_one_built_fresh(tmp_path: Path) -> None:
    old = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        async with old.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "0009"))
            for i, (vs, f, body) in enumerate(OLD_CHUNKS):
                await conn.execute(
                    sa.text(
                        "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, "
                        "end_offset, token_count, text, embedding) VALUES (:vs, :f, :i, 0, 1, 1, :t, :e)"
                    ),
                    {"vs": vs, "f": f, "i": i, "t": body, "e": _vectors(1, i)[0].tobytes()},
                )
        async with old.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
        async with old.connect() as conn:
            tables = {r[0] for r in await conn.execute(sa.text("SELECT name FROM sqlite_master"))}
        assert "retrieval_chunks_fts" not in tables and "retrieval_chunks_ai" not in tables
        upgraded = SQLiteChunkIndex(old)
        fresh_engine, fresh = await _sqlite(tmp_path, "fresh.db")
        try:
            for i, (vs, f, body) in enumerate(OLD_CHUNKS):
                await fresh.add_chunks(vs, f, [Chunk(i, body, 0, 1, 1)], _vectors(1, i))
            for stores in (["vs_a"], ["vs_a", "vs_b"]):
                for words in (["proteins", "fold"], ["cafe", "resume", "naive"], ["kinase"], ["quickly"]):
                    got = await upgraded.keyword_candidates(stores, words, 10)
                    assert got, (stores, words)
                    assert got == await fresh.keyword_candidates(stores, words, 10)
        finally:
            await fresh_engine.dispose()
        # And back down: FTS5 is rebuilt from the text, the keyword columns go.
        async with old.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0009"))
        async with old.connect() as conn:
            hits = await conn.execute(
                sa.text("SELECT count(*) FROM retrieval_chunks_fts WHERE retrieval_chunks_fts MATCH 'protein'")
            )
            assert hits.scalar_one() == 4
            columns = {r[1] for r in await conn.execute(sa.text("PRAGMA table_info(retrieval_chunks)"))}
            assert "kw_terms" not in columns
    finally:
        await old.dispose()


async def test_delete_file_leaves_ranking_and_statistics_as_if_it_never_came(tmp_path: Path) -> None:
    rng = random.Random(9)
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]

    def texts(n: int) -> list[str]:
        return [" ".join(rng.choices(vocab, k=rng.randint(1, 8))) for _ in range(n)]

    engine, index = await _sqlite(tmp_path, "d.db")
    try:
        query = ["alpha", "epsilon", "zeta"]
        await _add(index, "vs", "file-keep", texts(40))
        await index.keyword_candidates(["vs"], query, 10)  # cached
        await _add(index, "vs", "file-gone", [t + " zeta zeta alpha" for t in texts(300)], seed=1)
        with_it = await index.keyword_candidates(["vs"], query, 10)  # appended to the cached store
        await _add(index, "vs", "file-keep2", texts(25), seed=2)
        await index.keyword_candidates(["vs"], query, 10)
        await index.delete_file("vs", "file-gone")
        kept = await _stored(engine, "vs")
        assert {f for f, _ in kept.values()} == {"file-keep", "file-keep2"}
        after = await index.keyword_candidates(["vs"], query, 10)
        assert after != with_it
        _same(after, brute_bm25(kept, query, 10))
        _same(
            await index.keyword_candidates(["vs"], query, 10, ["file-keep2"]),
            brute_bm25(kept, query, 10, ["file-keep2"]),
        )
        # A fresh index over the same database (nothing cached) agrees exactly.
        assert await SQLiteChunkIndex(engine).keyword_candidates(["vs"], query, 10) == after
    finally:
        await engine.dispose()


async def test_searches_between_writes_see_every_batch(tmp_path: Path) -> None:
    # The cached store grows by appended segments (merged as they come); each search equals BM25 over
    # what is stored at that moment, and the vectors grow alongside.
    rng = random.Random(2)
    vocab = ["alpha", "beta", "gamma", "delta"]
    engine, index = await _sqlite(tmp_path, "e.db")
    try:
        for f in range(9):
            n = rng.choice([1, 3, 20, 70])
            await _add(index, "vs", f"file-{f % 4}", [" ".join(rng.choices(vocab, k=5)) for _ in range(n)], seed=f)
            docs = await _stored(engine, "vs")
            _same(
                await index.keyword_candidates(["vs"], ["alpha", "delta"], 15), brute_bm25(docs, ["alpha", "delta"], 15)
            )
            found = await index.vector_candidates(["vs"], _vectors(1, 99)[0], 1000)
            assert sorted(c.chunk_id for c in found) == sorted(docs)
    finally:
        await engine.dispose()


async def test_concurrent_searches_after_a_write_both_see_it(tmp_path: Path) -> None:
    # A search runs its keyword and vector sides at once: while the first brings the cached store up to
    # date, the second must wait for that, not read the store as it was before the write.
    engine, index = await _sqlite(tmp_path, "c.db")
    try:
        await _add(index, "vs", "file-0", ["alpha beta", "gamma delta"], seed=1)
        await index.keyword_candidates(["vs"], ["alpha"], 10)  # cached
        await _add(index, "vs", "file-1", ["alpha alpha alpha", "beta"], seed=2)
        for first in ("keyword", "vector"):
            await _add(index, "vs", f"file-{first}", ["alpha epsilon"], seed=3)
            docs = await _stored(engine, "vs")
            keyword = index.keyword_candidates(["vs"], ["alpha"], 10)
            vector = index.vector_candidates(["vs"], _vectors(1, 99)[0], 1000)
            if first == "keyword":
                kw, vec = await asyncio.gather(keyword, vector)
            else:
                vec, kw = await asyncio.gather(vector, keyword)
            _same(kw, brute_bm25(docs, ["alpha"], 10))
            assert sorted(c.chunk_id for c in vec) == sorted(docs)
    finally:
        await engine.dispose()


async def test_delete_add_delete_ranks_as_brute_force_without_reloading_the_store(tmp_path: Path) -> None:
    # A cached store takes writes without a reload (deletes are masked out of its postings, adds
    # appended): each search after a delete, an add and another delete equals BM25 over what is stored,
    # and the store's rows are scanned once, by the first search.
    rng = random.Random(4)
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon"]

    def texts(n: int, extra: str = "") -> list[str]:
        return [" ".join(rng.choices(vocab, k=rng.randint(1, 7))) + extra for _ in range(n)]

    engine, index = await _sqlite(tmp_path, "f.db")
    scans: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "kw_terms" in statement and statement.lstrip().upper().startswith("SELECT"):
            scans.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        query = ["alpha", "epsilon"]
        for f in range(4):
            await _add(index, "vs", f"file-{f}", texts(60, " epsilon" * f), seed=f)
        _same(await index.keyword_candidates(["vs"], query, 12), brute_bm25(await _stored(engine, "vs"), query, 12))
        assert len(scans) == 1
        for verb, file_no in (("delete", 1), ("add", 1), ("delete", 3), ("add", 5), ("delete", 0)):
            if verb == "delete":
                assert await index.delete_file("vs", f"file-{file_no}") > 0
            else:
                await _add(index, "vs", f"file-{file_no}", texts(40, " alpha alpha"), seed=10 + file_no)
            docs = await _stored(engine, "vs")
            _same(await index.keyword_candidates(["vs"], query, 12), brute_bm25(docs, query, 12))
            _same(
                await index.keyword_candidates(["vs"], query, 12, ["file-1", "file-2"]),
                brute_bm25(docs, query, 12, ["file-1", "file-2"]),
            )
            found = await index.vector_candidates(["vs"], _vectors(1, 99)[0], 1000)
            assert sorted(c.chunk_id for c in found) == sorted(docs)
        assert len(scans) == 1, "a write reloaded the store"
        # A fresh index over the same database (nothing cached) agrees exactly.
        fresh = SQLiteChunkIndex(engine)
        assert await fresh.keyword_candidates(["vs"], query, 12) == await index.keyword_candidates(["vs"], query, 12)
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", seen)
        await engine.dispose()
