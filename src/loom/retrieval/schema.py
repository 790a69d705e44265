"""Retrieval tables, as raw dialect-specific DDL (FTS5 on SQLite; pgvector + tsvector on PostgreSQL).

The Alembic revision `0002_retrieval` and `create_schema` (tests, ad-hoc setups) run the same
statements, so the two can never drift.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

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


async def create_schema(conn: AsyncConnection, dimensions: int = DEFAULT_DIMENSIONS) -> None:
    """Create the retrieval tables on this connection's database (idempotent)."""
    for statement in schema_statements(conn.dialect.name, dimensions):
        await conn.execute(text(statement))
