"""Retrieval tables, as raw dialect-specific DDL (keyword blobs on SQLite; pgvector + tsvector on PostgreSQL).

The Alembic revisions `0002_retrieval` (`schema_statements`), `0003_retrieval_term_stats`
(`term_stats_statements`), `0010_sqlite_keyword_postings` (`sqlite_keyword_upgrade`),
`0011_pg_keyword_columns` (`keyword_columns_upgrade`), `0012_late_tokens` (`late_tokens_upgrade`) and `create_schema` (tests, ad-hoc setups) run
the same statements, so they can never drift. Statements of a revision never change once released: a later schema change
is a new list and a new revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

if TYPE_CHECKING:
    from loom.retrieval.analysis import Encoded  # the analyzer loads only when a migration encodes

DEFAULT_DIMENSIONS = 256  # the bundled WordLlama embedder

SQLITE_STATEMENTS = [
    """CREATE TABLE IF NOT EXISTS retrieval_files (
        vector_store_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        filename TEXT NOT NULL,
        attributes TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (vector_store_id, file_id)
    )""",
    """CREATE TABLE IF NOT EXISTS retrieval_chunks (
        id INTEGER PRIMARY KEY,
        vector_store_id TEXT NOT NULL,
        file_id TEXT NOT NULL,
        chunk_index INTEGER NOT NULL,
        start_offset INTEGER NOT NULL,
        end_offset INTEGER NOT NULL,
        token_count INTEGER NOT NULL,
        text TEXT NOT NULL,
        embedding BLOB NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS retrieval_chunks_file
        ON retrieval_chunks (vector_store_id, file_id, chunk_index)""",
    # External-content FTS5 table: the text lives once, in retrieval_chunks; triggers keep it in sync.
    # The store id is indexed too, so a store is selected inside the MATCH (a doclist intersection)
    # instead of looking up every matching row in retrieval_chunks (3x slower at 100k chunks).
    """CREATE VIRTUAL TABLE IF NOT EXISTS retrieval_chunks_fts USING fts5(
        text, vector_store_id, content='retrieval_chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER IF NOT EXISTS retrieval_chunks_ai AFTER INSERT ON retrieval_chunks BEGIN
        INSERT INTO retrieval_chunks_fts (rowid, text, vector_store_id)
        VALUES (new.id, new.text, new.vector_store_id);
    END""",
    """CREATE TRIGGER IF NOT EXISTS retrieval_chunks_ad AFTER DELETE ON retrieval_chunks BEGIN
        INSERT INTO retrieval_chunks_fts (retrieval_chunks_fts, rowid, text, vector_store_id)
        VALUES ('delete', old.id, old.text, old.vector_store_id);
    END""",
]

SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS retrieval_chunks_ad",
    "DROP TRIGGER IF EXISTS retrieval_chunks_ai",
    "DROP TABLE IF EXISTS retrieval_chunks_fts",
    "DROP TABLE IF EXISTS retrieval_chunks",
    "DROP TABLE IF EXISTS retrieval_files",
]


def hnsw_index_statement(dimensions: int) -> str:
    """HNSW over one embedding size. The column is dimension-less `vector` so that stores embedded by
    different models can live side by side; each size gets its own partial expression index."""
    d = int(dimensions)
    return (
        f"CREATE INDEX IF NOT EXISTS retrieval_chunks_hnsw_{d} ON retrieval_chunks "
        f"USING hnsw ((embedding::vector({d})) vector_cosine_ops) "
        f"WITH (m = 16, ef_construction = 64) WHERE embedding_dims = {d}"
    )


# PostgreSQL's `english` configuration with two changes, closer to SQLite's FTS5 `porter unicode61`:
# no stop list on the document side (queries drop Loom's own, `index.query_terms`; the english list
# also shortened |D| and so skewed BM25's length normalisation), and a hyphenated word is indexed as
# its parts only, not also as the whole compound. SciFact keyword nDCG@10 0.687 -> 0.694.
TEXT_SEARCH_CONFIG = "loom_english"
_TEXT_SEARCH_DICTIONARY = "loom_english_stem"


def _create_if_missing(statement: str) -> str:
    """CREATE TEXT SEARCH ... has no IF NOT EXISTS; `create_schema` must stay idempotent. An existing
    dictionary is reported as a unique violation of the catalog, not as duplicate_object."""
    return f"DO $$ BEGIN {statement}; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"


def postgres_statements(dimensions: int = DEFAULT_DIMENSIONS) -> list[str]:
    cfg, stem = TEXT_SEARCH_CONFIG, _TEXT_SEARCH_DICTIONARY
    return [
        "CREATE EXTENSION IF NOT EXISTS vector",
        # The snowball english stemmer without its stop-word file.
        _create_if_missing(f"CREATE TEXT SEARCH DICTIONARY {stem} (TEMPLATE = snowball, Language = english)"),
        _create_if_missing(
            f"CREATE TEXT SEARCH CONFIGURATION {cfg} (COPY = english); "
            f"ALTER TEXT SEARCH CONFIGURATION {cfg} ALTER MAPPING FOR asciiword, hword_asciipart, word, "
            f"hword_part WITH {stem}; "
            f"ALTER TEXT SEARCH CONFIGURATION {cfg} DROP MAPPING FOR asciihword, hword, numhword"
        ),
        """CREATE TABLE IF NOT EXISTS retrieval_files (
            vector_store_id TEXT NOT NULL,
            file_id TEXT NOT NULL,
            filename TEXT NOT NULL,
            attributes JSONB NOT NULL DEFAULT '{}'::jsonb,
            PRIMARY KEY (vector_store_id, file_id)
        )""",
        f"""CREATE TABLE IF NOT EXISTS retrieval_chunks (
            id BIGSERIAL PRIMARY KEY,
            vector_store_id TEXT NOT NULL,
            file_id TEXT NOT NULL,
            chunk_index INTEGER NOT NULL,
            start_offset INTEGER NOT NULL,
            end_offset INTEGER NOT NULL,
            token_count INTEGER NOT NULL,
            text TEXT NOT NULL,
            embedding vector NOT NULL,
            embedding_dims INTEGER NOT NULL,
            doc_len INTEGER NOT NULL DEFAULT 0,
            term_freqs JSONB NOT NULL DEFAULT '{{}}'::jsonb,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('{cfg}', text)) STORED
        )""",
        """CREATE INDEX IF NOT EXISTS retrieval_chunks_file
            ON retrieval_chunks (vector_store_id, file_id, chunk_index)""",
        "CREATE INDEX IF NOT EXISTS retrieval_chunks_tsv ON retrieval_chunks USING gin (tsv)",
        hnsw_index_statement(dimensions),
    ]


# Revision 0003: BM25 statistics kept at ingest (PostgreSQL only; SQLite's FTS5 keeps its own).
# Counting a lexeme's chunks per query cost tens of milliseconds per term at a million chunks; a
# row per (store, lexeme) is one index probe. `PostgresChunkIndex.add_chunks` / `delete_file` /
# `delete_store` maintained both tables (until 0011 dropped them and the lexeme table). Existing rows are
# counted once, when the tables are created (an upgraded database, or `create_schema` on an older one).
POSTGRES_TERM_STATS = [
    """DO $$ BEGIN
    IF to_regclass('retrieval_terms') IS NULL THEN
        CREATE TABLE retrieval_terms (
            vector_store_id TEXT NOT NULL,
            lexeme TEXT NOT NULL,
            df BIGINT NOT NULL,
            PRIMARY KEY (vector_store_id, lexeme)
        );
        INSERT INTO retrieval_terms (vector_store_id, lexeme, df)
            SELECT c.vector_store_id, t.lexeme, count(*) FROM retrieval_chunks c,
            LATERAL unnest(tsvector_to_array(c.tsv)) AS t(lexeme) GROUP BY c.vector_store_id, t.lexeme;
    END IF;
    END $$""",
    """DO $$ BEGIN
    IF to_regclass('retrieval_store_stats') IS NULL THEN
        CREATE TABLE retrieval_store_stats (
            vector_store_id TEXT PRIMARY KEY,
            chunks BIGINT NOT NULL,
            total_len BIGINT NOT NULL
        );
        INSERT INTO retrieval_store_stats (vector_store_id, chunks, total_len)
            SELECT vector_store_id, count(*), sum(doc_len) FROM retrieval_chunks GROUP BY vector_store_id;
    END IF;
    END $$""",
]

POSTGRES_TERM_STATS_DROP = [
    "DROP TABLE IF EXISTS retrieval_store_stats",
    "DROP TABLE IF EXISTS retrieval_terms",
]

# Revision 0011: keyword search from an in-memory index per store (`loom.retrieval.pg_keywords`).
# Each chunk's keywords as `analysis.encode` writes them, the generation that added it; each store's
# generation (bumped by every write) and that of its last delete. Existing chunks are encoded by
# `backfill_keyword_columns` (Python: the analyzer is PyStemmer's), then the columns become NOT NULL.
# Revision 0011 first drops what ranking no longer reads (0002's tsvector column, its GIN index, the
# per-chunk jsonb term frequencies and length; 0003's lexeme table and stores' total length), so the
# backfill's UPDATEs neither recompute the generated `tsv` nor re-index GIN. Downgrade recomputes them.
POSTGRES_TSVECTOR_DROP = [
    "DROP INDEX IF EXISTS retrieval_chunks_tsv",
    "ALTER TABLE retrieval_chunks DROP COLUMN IF EXISTS tsv, DROP COLUMN IF EXISTS term_freqs, "
    "DROP COLUMN IF EXISTS doc_len",
    "DROP TABLE IF EXISTS retrieval_terms",
    "ALTER TABLE retrieval_store_stats DROP COLUMN IF EXISTS total_len",
]
POSTGRES_TSVECTOR_RESTORE = [
    "ALTER TABLE retrieval_chunks ADD COLUMN doc_len INTEGER NOT NULL DEFAULT 0, "
    "ADD COLUMN term_freqs JSONB NOT NULL DEFAULT '{}'::jsonb, "
    f"ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('{TEXT_SEARCH_CONFIG}', text)) STORED",
    # As 0002's PostgresChunkIndex wrote them.
    "UPDATE retrieval_chunks c SET (doc_len, term_freqs) = (SELECT COALESCE(sum(array_length(positions, 1)), 0), "
    "COALESCE(jsonb_object_agg(lexeme, array_length(positions, 1)), '{}'::jsonb) FROM unnest(c.tsv))",
    "CREATE INDEX IF NOT EXISTS retrieval_chunks_tsv ON retrieval_chunks USING gin (tsv)",
    "ALTER TABLE retrieval_store_stats ADD COLUMN total_len BIGINT NOT NULL DEFAULT 0",
    "UPDATE retrieval_store_stats s SET total_len = COALESCE((SELECT sum(doc_len) FROM retrieval_chunks c "
    "WHERE c.vector_store_id = s.vector_store_id), 0)",
    "ALTER TABLE retrieval_store_stats ALTER COLUMN total_len DROP DEFAULT",
    POSTGRES_TERM_STATS[0],  # retrieval_terms, counted from the chunks
]
POSTGRES_KEYWORD_COLUMNS = [
    "CREATE SEQUENCE IF NOT EXISTS retrieval_kw_generation",
    "ALTER TABLE retrieval_chunks ADD COLUMN IF NOT EXISTS kw_terms BYTEA, "
    "ADD COLUMN IF NOT EXISTS kw_tfs BYTEA, ADD COLUMN IF NOT EXISTS kw_len INTEGER, "
    "ADD COLUMN IF NOT EXISTS kw_generation BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE retrieval_store_stats ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0, "
    "ADD COLUMN IF NOT EXISTS deleted_generation BIGINT NOT NULL DEFAULT 0",
    # Delta loads: a store's chunks added since a generation.
    "CREATE INDEX IF NOT EXISTS retrieval_chunks_kw_generation ON retrieval_chunks (vector_store_id, kw_generation)",
]
POSTGRES_KEYWORD_NOT_NULL = [
    "ALTER TABLE retrieval_chunks ALTER COLUMN kw_terms SET NOT NULL, ALTER COLUMN kw_tfs SET NOT NULL, "
    "ALTER COLUMN kw_len SET NOT NULL",
]
POSTGRES_KEYWORD_DROP = [
    "DROP INDEX IF EXISTS retrieval_chunks_kw_generation",
    "ALTER TABLE retrieval_store_stats DROP COLUMN IF EXISTS generation, DROP COLUMN IF EXISTS deleted_generation",
    "ALTER TABLE retrieval_chunks DROP COLUMN IF EXISTS kw_terms, DROP COLUMN IF EXISTS kw_tfs, "
    "DROP COLUMN IF EXISTS kw_len, DROP COLUMN IF EXISTS kw_generation",
    "DROP SEQUENCE IF EXISTS retrieval_kw_generation",
]
# Chunks encoded per statement when a migration fills the keyword columns (both databases).
BACKFILL_BATCH = 1000


def _unencoded(conn: Connection, column: str, batch: int) -> Iterator[tuple[list[int], list[Encoded]]]:
    """The chunks whose keyword `column` is still NULL, in batches by id, with their encodings (the
    caller writes each batch before asking for the next)."""
    from loom.retrieval.analysis import encode  # the analyzer (numpy, PyStemmer): only when upgrading

    last = 0
    while True:
        rows = conn.execute(
            text(f"SELECT id, text FROM retrieval_chunks WHERE {column} IS NULL AND id > :last ORDER BY id LIMIT :n"),
            {"last": last, "n": batch},
        ).all()
        if not rows:
            return
        yield [int(r[0]) for r in rows], [encode(str(r[1])) for r in rows]
        last = int(rows[-1][0])


def backfill_keyword_columns(conn: Connection, batch: int = BACKFILL_BATCH) -> int:
    """Encode the keywords of every chunk that has none yet (PostgreSQL), `batch` chunks per
    statement; the number encoded. Synchronous (Alembic's connection; `create_schema` runs it
    through `run_sync`)."""
    done = 0
    for ids, encoded in _unencoded(conn, "kw_terms", batch):
        conn.execute(
            text(
                "UPDATE retrieval_chunks c SET kw_terms = u.t, kw_tfs = u.f, kw_len = u.n FROM unnest("
                "CAST(:ids AS bigint[]), CAST(:t AS bytea[]), CAST(:f AS bytea[]), CAST(:n AS int[])) "
                "AS u(id, t, f, n) WHERE c.id = u.id"
            ),
            {
                "ids": ids,
                "t": [e.terms for e in encoded],
                "f": [e.tfs for e in encoded],
                "n": [e.length for e in encoded],
            },
        )
        done += len(ids)
    return done


def keyword_columns_upgrade(conn: Connection) -> None:
    """Revision 0011 on PostgreSQL (the migration and `create_schema` call it there only)."""
    for statement in POSTGRES_TSVECTOR_DROP + POSTGRES_KEYWORD_COLUMNS:
        conn.execute(text(statement))
    backfill_keyword_columns(conn)
    for statement in POSTGRES_KEYWORD_NOT_NULL:
        conn.execute(text(statement))


def keyword_columns_downgrade(conn: Connection) -> None:
    """Revision 0011's downgrade on PostgreSQL."""
    for statement in POSTGRES_TSVECTOR_RESTORE + POSTGRES_KEYWORD_DROP:
        conn.execute(text(statement))


POSTGRES_DROP = [
    "DROP TABLE IF EXISTS retrieval_chunks",
    "DROP TABLE IF EXISTS retrieval_files",
    f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {TEXT_SEARCH_CONFIG}",
    f"DROP TEXT SEARCH DICTIONARY IF EXISTS {_TEXT_SEARCH_DICTIONARY}",
]


def schema_statements(dialect_name: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[str]:
    if dialect_name == "sqlite":
        return list(SQLITE_STATEMENTS)
    if dialect_name == "postgresql":
        return postgres_statements(dimensions)
    raise ValueError(f"Retrieval supports SQLite and PostgreSQL, not {dialect_name!r}.")


def drop_statements(dialect_name: str) -> list[str]:
    return list(SQLITE_DROP if dialect_name == "sqlite" else POSTGRES_DROP)


def term_stats_statements(dialect_name: str) -> list[str]:
    """Revision 0003's statements (none on SQLite)."""
    return list(POSTGRES_TERM_STATS) if dialect_name == "postgresql" else []


def term_stats_drop_statements(dialect_name: str) -> list[str]:
    return list(POSTGRES_TERM_STATS_DROP) if dialect_name == "postgresql" else []


# Revision 0010 (SQLite): each chunk's keywords as `analysis.encode` writes them (sorted term hashes,
# term frequencies, length), read into per-store in-memory postings (`SQLiteChunkIndex`), so BM25's
# statistics are the searched stores' and the top k exact. The FTS5 table and its triggers go.
SQLITE_KEYWORD_COLUMNS = ["kw_terms BLOB", "kw_tfs BLOB", "kw_len INTEGER"]
SQLITE_FTS_DROP = SQLITE_DROP[:3]


def sqlite_keyword_upgrade(conn: Connection) -> None:
    """Revision 0010 on SQLite (idempotent, resumable): add the keyword columns, fill them from each
    chunk's text in batches, drop FTS5."""
    have = {str(r[1]) for r in conn.execute(text("PRAGMA table_info(retrieval_chunks)"))}
    for column in SQLITE_KEYWORD_COLUMNS:
        if column.split()[0] not in have:
            conn.execute(text(f"ALTER TABLE retrieval_chunks ADD COLUMN {column}"))
    for ids, encoded in _unencoded(conn, "kw_len", BACKFILL_BATCH):
        conn.execute(
            text("UPDATE retrieval_chunks SET kw_terms = :t, kw_tfs = :f, kw_len = :n WHERE id = :id"),
            [{"id": i, "t": e.terms, "f": e.tfs, "n": e.length} for i, e in zip(ids, encoded, strict=True)],
        )
    for statement in SQLITE_FTS_DROP:
        conn.execute(text(statement))


def sqlite_keyword_downgrade(conn: Connection) -> None:
    """Revision 0010 undone: FTS5 back (rebuilt from the chunks' text), the keyword columns dropped."""
    for statement in SQLITE_STATEMENTS[3:]:
        conn.execute(text(statement))
    conn.execute(text("INSERT INTO retrieval_chunks_fts (retrieval_chunks_fts) VALUES ('rebuild')"))
    for column in SQLITE_KEYWORD_COLUMNS:
        conn.execute(text(f"ALTER TABLE retrieval_chunks DROP COLUMN {column.split()[0]}"))


def _has_keyword_columns(conn: Connection) -> bool:
    found = conn.execute(
        text(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('retrieval_chunks') "
            "AND attname = 'kw_terms' AND NOT attisdropped"
        )
    )
    return found.first() is not None


# Revision 0012 (both databases): each chunk's compact token vectors for reranking (`loom.retrieval.rerank`),
# NULL for chunks written before it or embedded by a model without token vectors (those are not reranked).
LATE_TOKENS_COLUMN = "late_tokens"


def late_tokens_upgrade(conn: Connection, dialect_name: str) -> None:
    """Revision 0012 (idempotent): the nullable `late_tokens` column. Existing chunks keep NULL: filling it
    would mean running the model over every stored chunk again."""
    if dialect_name == "postgresql":
        conn.execute(text(f"ALTER TABLE retrieval_chunks ADD COLUMN IF NOT EXISTS {LATE_TOKENS_COLUMN} BYTEA"))
        return
    have = {str(r[1]) for r in conn.execute(text("PRAGMA table_info(retrieval_chunks)"))}
    if LATE_TOKENS_COLUMN not in have:
        conn.execute(text(f"ALTER TABLE retrieval_chunks ADD COLUMN {LATE_TOKENS_COLUMN} BLOB"))


def late_tokens_downgrade(conn: Connection, dialect_name: str) -> None:
    if dialect_name == "postgresql":
        conn.execute(text(f"ALTER TABLE retrieval_chunks DROP COLUMN IF EXISTS {LATE_TOKENS_COLUMN}"))
    else:
        conn.execute(text(f"ALTER TABLE retrieval_chunks DROP COLUMN {LATE_TOKENS_COLUMN}"))


async def create_schema(conn: AsyncConnection, dialect_name: str, dimensions: int = DEFAULT_DIMENSIONS) -> None:
    """Create the retrieval tables on this connection's database (`dialect_name`: the index's own), or
    bring them up to date (idempotent)."""
    statements = schema_statements(dialect_name, dimensions) + term_stats_statements(dialect_name)
    if dialect_name == "postgresql" and await conn.run_sync(_has_keyword_columns):
        # Already at 0011: 0002's and 0003's lists would make again what 0011 dropped.
        statements = [s for s in statements if s.startswith("CREATE EXTENSION") or "USING hnsw" in s]
    for statement in statements:
        await conn.execute(text(statement))
    if dialect_name == "postgresql":
        await conn.run_sync(keyword_columns_upgrade)
    if dialect_name == "sqlite":
        await conn.run_sync(sqlite_keyword_upgrade)
    await conn.run_sync(late_tokens_upgrade, dialect_name)
