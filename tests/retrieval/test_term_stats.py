"""PostgreSQL's per-store statistics (chunk counts; lexeme document frequencies and total lengths
until migration 0011 dropped them), kept at ingest by `PostgresChunkIndex` and backfilled by
migrations 0003 and 0011's downgrade; checked against a recount from the chunks. And that
`create_schema` makes the schema the migrations make."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from loom.retrieval.pg_index import PostgresChunkIndex, _lock_store
from loom.retrieval.schema import create_schema, keyword_columns_downgrade, keyword_columns_upgrade, schema_statements
from tests.retrieval.support import chunks_with_vectors, migration, run_migration
from tests.support.postgres import new_database

TEXTS = [
    "Magma rises through the crust and erupts from volcanoes as lava and ash.",
    "Lava flows cool into basalt; volcanic ash is carried far by the wind.",
    "Blue whales are the largest animals ever known to have lived on Earth.",
]


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(new_database("stats"))
    try:
        yield eng
    finally:
        await eng.dispose()


async def _stats(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        stores = await conn.execute(text("SELECT vector_store_id, chunks FROM retrieval_store_stats"))
        return {r[0]: int(r[1]) for r in stores if r[1]}


async def _recount(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        stores = await conn.execute(text("SELECT vector_store_id, count(*) FROM retrieval_chunks GROUP BY 1"))
        return {r[0]: int(r[1]) for r in stores}


async def _term_stats(engine: AsyncEngine) -> tuple[dict[tuple[str, str], int], dict[str, tuple[int, int]]]:
    """0003's statistics (before 0011, or after its downgrade)."""
    async with engine.connect() as conn:
        terms = await conn.execute(text("SELECT vector_store_id, lexeme, df FROM retrieval_terms"))
        stores = await conn.execute(text("SELECT vector_store_id, chunks, total_len FROM retrieval_store_stats"))
        return {(r[0], r[1]): int(r[2]) for r in terms}, {r[0]: (int(r[1]), int(r[2])) for r in stores if r[1]}


async def _term_recount(engine: AsyncEngine) -> tuple[dict[tuple[str, str], int], dict[str, tuple[int, int]]]:
    async with engine.connect() as conn:
        terms = await conn.execute(
            text(
                "SELECT vector_store_id, l, count(*) FROM retrieval_chunks, unnest(tsvector_to_array(tsv)) AS l "
                "GROUP BY vector_store_id, l"
            )
        )
        stores = await conn.execute(
            text("SELECT vector_store_id, count(*), sum(doc_len) FROM retrieval_chunks GROUP BY vector_store_id")
        )
        return {(r[0], r[1]): int(r[2]) for r in terms}, {r[0]: (int(r[1]), int(r[2])) for r in stores}


async def test_statistics_follow_adds_and_deletes(engine: AsyncEngine) -> None:
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.create_schema()
    for store, file_id, texts in [
        ("vs_a", "file-1", TEXTS[:2]),
        ("vs_a", "file-2", TEXTS[1:]),
        ("vs_b", "file-1", TEXTS),
    ]:
        await index.put_file(store, file_id, f"{file_id}.txt")
        await index.add_chunks(store, file_id, *chunks_with_vectors(texts))
    expected = await _recount(engine)
    assert await _stats(engine) == expected == {"vs_a": 4, "vs_b": 3}

    assert await index.delete_file("vs_a", "file-2") == 2
    assert await _stats(engine) == await _recount(engine) == {"vs_a": 2, "vs_b": 3}

    assert await index.delete_store("vs_b") == 3
    assert await _stats(engine) == await _recount(engine) == {"vs_a": 2}
    assert await index.delete_file("vs_a", "file-missing") == 0
    assert await _stats(engine) == await _recount(engine)


async def test_keyword_search_uses_current_statistics(engine: AsyncEngine) -> None:
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.create_schema()
    await index.put_file("vs_a", "file-1", "a.txt")
    await index.add_chunks("vs_a", "file-1", *chunks_with_vectors(TEXTS))
    first = await index.keyword_candidates(["vs_a"], ["lava", "whales"], 10)
    assert len(first) == 3
    # After a delete, the remaining chunks are ranked with the new (smaller) store's statistics at once.
    await index.put_file("vs_a", "file-2", "b.txt")
    await index.add_chunks("vs_a", "file-2", *chunks_with_vectors(["whales and whales and more whales"]))
    assert (await index.keyword_candidates(["vs_a"], ["whales"], 10))[0].score > 0
    await index.delete_file("vs_a", "file-1")
    only = await index.keyword_candidates(["vs_a"], ["lava", "whales"], 10)
    assert len(only) == 1
    assert await index.keyword_candidates(["vs_a"], ["lava"], 10) == []


def _run(sync_conn: object, module: ModuleType, step: str) -> set[str]:
    run_migration(sync_conn, module, step)
    return set(inspect(sync_conn).get_table_names())


async def test_migration_0003_backfills_a_0002_database(engine: AsyncEngine) -> None:
    rev = migration("0003_retrieval_term_stats.py")
    assert (rev.revision, rev.down_revision) == ("0003", "0002")
    async with engine.begin() as conn:
        for statement in schema_statements("postgresql"):  # what revision 0002 made
            await conn.execute(text(statement))
        # Rows as 0002's PostgresChunkIndex wrote them: no statistics tables yet.
        for i, (store, body) in enumerate([("vs_a", TEXTS[0]), ("vs_a", TEXTS[1]), ("vs_b", TEXTS[2])]):
            await conn.execute(
                text(
                    "INSERT INTO retrieval_chunks (vector_store_id, file_id, chunk_index, start_offset, end_offset, "
                    "token_count, text, embedding, embedding_dims, doc_len, term_freqs) SELECT :vs, 'file-1', :i, 0, "
                    "1, 1, :t, CAST('[1,0,0,0,0,0,0,0]' AS vector), 8, (SELECT COALESCE(sum(array_length(positions, 1)), 0) "
                    "FROM unnest(to_tsvector('loom_english', CAST(:t AS text)))), '{}'"
                ),
                {"vs": store, "i": i, "t": body},
            )
        tables = await conn.run_sync(_run, rev, "upgrade")
    assert {"retrieval_terms", "retrieval_store_stats"} <= tables
    expected = await _term_recount(engine)
    assert await _term_stats(engine) == expected
    assert expected[0][("vs_a", "lava")] == 2
    assert expected[1]["vs_b"][0] == 1

    # 0011 drops them (and the tsvector); the index then keeps the chunk counts.
    async with engine.begin() as conn:
        await conn.run_sync(keyword_columns_upgrade)
        assert "retrieval_terms" not in set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.put_file("vs_b", "file-2", "w.txt")
    await index.add_chunks("vs_b", "file-2", *chunks_with_vectors(["Whales sing."]))
    assert await _stats(engine) == await _recount(engine) == {"vs_a": 2, "vs_b": 2}

    # 0011's downgrade recomputes 0003's statistics, counting the chunk added since.
    async with engine.begin() as conn:
        await conn.run_sync(keyword_columns_downgrade)
    expected = await _term_recount(engine)
    assert await _term_stats(engine) == expected
    assert expected[0][("vs_b", "sing")] == 1 and expected[1]["vs_b"][0] == 2

    async with engine.begin() as conn:
        tables = await conn.run_sync(_run, rev, "downgrade")
    assert not {"retrieval_terms", "retrieval_store_stats"} & tables
    assert "retrieval_chunks" in tables


async def test_migration_0003_on_sqlite_changes_nothing(tmp_path: Path) -> None:
    rev = migration("0003_retrieval_term_stats.py")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    async with engine.begin() as conn:
        before = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert await conn.run_sync(_run, rev, "upgrade") == before
        assert await conn.run_sync(_run, rev, "downgrade") == before
    await engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_fresh_database_migrates_through_0003(backend: str, tmp_path: Path) -> None:
    from loom.store.migrate import migrate

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else new_database("mig")
    engine = create_async_engine(url)
    try:
        await migrate(engine)
        await migrate(engine)  # again: nothing to do
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
            assert version >= "0003"
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert ("retrieval_store_stats" in tables) == (backend == "postgres")
        assert "retrieval_terms" not in tables  # 0011 dropped it
    finally:
        await engine.dispose()


async def test_concurrent_ingests_and_deletes_of_one_store_keep_the_statistics(engine: AsyncEngine) -> None:
    """Ingests and deletes of one store at the same time update the same lexeme rows in different
    orders; the per-store lock makes them take turns, so none deadlocks and the counts stay exact."""
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.create_schema()
    words = ["lava", "ash", "magma", "crust", "basalt", "whale", "ocean", "plankton", "wind", "volcano"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(6)) for i in range(40)]

    async def ingest(n: int) -> None:
        await index.put_file("vs_busy", f"file-{n}", f"{n}.txt")
        await index.add_chunks("vs_busy", f"file-{n}", *chunks_with_vectors(texts[n:] + texts[:n]))

    for n in range(0, 8, 2):
        await ingest(n)
    # Deletes of the even files race ingests of the odd ones, several rounds.
    results = await asyncio.gather(
        *[ingest(n) for n in range(1, 8, 2)], *[index.delete_file("vs_busy", f"file-{n}") for n in range(0, 8, 2)]
    )
    assert results[4:] == [40, 40, 40, 40]
    assert await _stats(engine) == await _recount(engine) == {"vs_busy": 4 * 40}


async def test_statistics_writes_of_one_store_take_turns(engine: AsyncEngine) -> None:
    """While a transaction holds a store's write lock, an ingest and a delete of that store wait for
    it (another store's do not)."""
    index = PostgresChunkIndex(engine, dimensions=8)
    await index.create_schema()
    await index.put_file("vs_a", "file-1", "1.txt")
    await index.add_chunks("vs_a", "file-1", *chunks_with_vectors(TEXTS))
    async with engine.connect() as holder:
        await holder.execute(text("BEGIN"))
        await _lock_store(holder, "vs_a")
        ingest = asyncio.create_task(index.add_chunks("vs_a", "file-2", *chunks_with_vectors(TEXTS)))
        delete = asyncio.create_task(index.delete_file("vs_a", "file-1"))
        await index.add_chunks("vs_b", "file-1", *chunks_with_vectors(TEXTS))  # not held up
        await asyncio.sleep(0.3)
        assert not ingest.done() and not delete.done()
        await holder.execute(text("COMMIT"))
    await asyncio.wait_for(asyncio.gather(ingest, delete), 30)
    assert await _stats(engine) == await _recount(engine)


_SNAPSHOT = [
    "SELECT table_name, column_name, data_type, is_nullable, column_default, generation_expression "
    "FROM information_schema.columns WHERE table_schema = current_schema() AND table_name LIKE 'retrieval%' "
    "ORDER BY 1, 2",
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
    "AND tablename LIKE 'retrieval%' ORDER BY 1, 2",
    "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = current_schema() "
    "AND sequence_name LIKE 'retrieval%' ORDER BY 1",
]


async def _schema(engine: AsyncEngine) -> list[list[tuple[object, ...]]]:
    async with engine.connect() as conn:
        return [[tuple(r) for r in await conn.execute(text(q))] for q in _SNAPSHOT]


def _alembic(sync_conn: object, step: str, target: str) -> None:
    from alembic import command

    from loom.store.migrate import alembic_config

    getattr(command, step)(alembic_config(sync_conn), target)  # type: ignore[arg-type]


async def test_create_schema_makes_what_the_migrations_make() -> None:
    """At head: the same retrieval tables, columns and indexes whether migrated or made by
    `create_schema` (twice: it stays idempotent on a database past 0011), and none of the tsvector
    keyword search's. 0011's downgrade gives back the schema a database at 0010 has."""
    migrated, made, at_0010 = (create_async_engine(new_database("schema")) for _ in range(3))
    try:
        async with migrated.begin() as conn:
            await conn.run_sync(_alembic, "upgrade", "head")
        for _ in range(2):
            async with made.begin() as conn:
                await create_schema(conn, "postgresql")
        head = await _schema(migrated)
        assert await _schema(made) == head
        columns = {(r[0], r[1]) for r in head[0]}
        assert ("retrieval_chunks", "kw_terms") in columns and ("retrieval_store_stats", "chunks") in columns
        assert not {c for c in columns if c[1] in {"tsv", "term_freqs", "doc_len", "total_len"}}
        assert not {r[0] for r in head[0]} & {"retrieval_terms"}
        assert "retrieval_chunks_tsv" not in {r[1] for r in head[1]}

        async with at_0010.begin() as conn:
            await conn.run_sync(_alembic, "upgrade", "0010")
        async with migrated.begin() as conn:
            await conn.run_sync(_alembic, "downgrade", "0010")
        assert await _schema(migrated) == await _schema(at_0010)
    finally:
        for eng in (migrated, made, at_0010):
            await eng.dispose()
