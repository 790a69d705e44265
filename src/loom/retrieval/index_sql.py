"""What the SQLite and PostgreSQL chunk indexes share: the statements on the files table, the chunk
columns they read, and the conversion of rows to records (same tables and columns on both; only how
a JSON parameter is written differs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause, text

from loom.retrieval.index import Attributes, FileEntry, StoredChunk

# The columns `stored_chunk` reads, and the join they come from: append a WHERE clause.
CHUNK_COLUMNS = (
    "c.id, c.vector_store_id, c.file_id, f.filename, c.chunk_index, c.start_offset, c.end_offset, c.text, "
    "f.attributes FROM retrieval_chunks c JOIN retrieval_files f "
    "ON f.vector_store_id = c.vector_store_id AND f.file_id = c.file_id"
)
# A file's chunks in order (`ChunkIndex.file_chunks`); parameters :vs and :f.
FILE_CHUNKS = text(f"SELECT {CHUNK_COLUMNS} WHERE c.vector_store_id = :vs AND c.file_id = :f ORDER BY c.chunk_index")
DELETE_FILE_ENTRY = text("DELETE FROM retrieval_files WHERE vector_store_id = :vs AND file_id = :f")


def put_file_statement(json_param: str) -> TextClause:
    """Insert or replace a file's entry; `json_param` writes the :attrs parameter as the database's JSON."""
    return text(
        "INSERT INTO retrieval_files (vector_store_id, file_id, filename, attributes) "
        f"VALUES (:vs, :f, :name, {json_param}) ON CONFLICT (vector_store_id, file_id) "
        "DO UPDATE SET filename = excluded.filename, attributes = excluded.attributes"
    )


def set_attributes_statement(json_param: str) -> TextClause:
    return text(f"UPDATE retrieval_files SET attributes = {json_param} WHERE vector_store_id = :vs AND file_id = :f")


def file_params(vector_store_id: str, file_id: str, attributes: Attributes | None, **more: Any) -> dict[str, Any]:
    return {"vs": vector_store_id, "f": file_id, "attrs": json.dumps(attributes or {}), **more}


def attributes_of(value: Any) -> dict[str, Any]:
    """A file's attributes as read back: JSON text (SQLite) or already decoded (PostgreSQL's jsonb)."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})


def file_entry(r: Any) -> FileEntry:
    """A row of (vector_store_id, file_id, filename, attributes)."""
    return FileEntry(r[0], r[1], r[2], attributes_of(r[3]))


def stored_chunk(r: Any) -> StoredChunk:
    """A row of `CHUNK_COLUMNS`."""
    return StoredChunk(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]), r[7], attributes_of(r[8]))


def token_blobs(
    chunks: Sequence[Any], vectors: Any, late_tokens: Sequence[bytes | None] | None
) -> tuple[list[bytes | None], bool]:
    """`add_chunks`' arguments checked (one vector, and one token blob if any are given, per chunk); returns
    each chunk's token blob (None where it has none) and whether there is one to write: the `late_tokens`
    column (migration 0012) is written only then."""
    if len(chunks) != len(vectors) or (late_tokens is not None and len(late_tokens) != len(chunks)):
        raise ValueError("one vector (and token blob) per chunk")
    blobs: list[bytes | None] = list(late_tokens) if late_tokens is not None else [None] * len(chunks)
    return blobs, any(b is not None for b in blobs)
