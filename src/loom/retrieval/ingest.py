"""Ingestion: bytes → parse → chunk → embed → index, with typed failures for the vector store file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loom.retrieval.chunking import AUTO, Chunk, ChunkingStrategy, chunk_text
from loom.retrieval.embedding import Embedder
from loom.retrieval.errors import FileProcessingError, IndexingFailed
from loom.retrieval.index import ChunkIndex
from loom.retrieval.parsers import parse_file

log = logging.getLogger(__name__)

EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class IngestResult:
    chunks: int
    tokens: int
    text_bytes: int  # UTF-8 bytes of extracted text: a fair `usage_bytes` for the vector store file
    kind: str
    pages: int | None


async def ingest_file(
    index: ChunkIndex,
    embedder: Embedder,
    *,
    vector_store_id: str,
    file_id: str,
    filename: str,
    data: bytes,
    chunking: ChunkingStrategy = AUTO,
    attributes: Mapping[str, Any] | None = None,
) -> IngestResult:
    """Index one file into one vector store, replacing any chunks it had there.

    Raises `UnsupportedFile` / `InvalidFile` (their `code` is `unsupported_file` / `invalid_file`) or
    `IndexingFailed` (`server_error`) for anything else that goes wrong.
    """
    try:
        doc = await asyncio.to_thread(parse_file, data, filename)
        chunks = await asyncio.to_thread(chunk_text, doc.text, chunking)
        parts = [
            await embedder.embed([c.text for c in chunks[i : i + EMBED_BATCH]])
            for i in range(0, len(chunks), EMBED_BATCH)
        ]
        vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dimensions), np.float32)
        await index.delete_file(vector_store_id, file_id)
        await index.put_file(vector_store_id, file_id, filename, attributes)
        await index.add_chunks(vector_store_id, file_id, chunks, vectors)
    except FileProcessingError:
        raise
    except Exception as exc:
        log.exception("indexing %s into %s failed", file_id, vector_store_id)
        raise IndexingFailed("The file could not be indexed because of a server error.") from exc
    return IngestResult(
        chunks=len(chunks),
        tokens=_document_tokens(chunks, chunking),
        text_bytes=len(doc.text.encode("utf-8")),
        kind=doc.kind,
        pages=doc.pages,
    )


def _document_tokens(chunks: Sequence[Chunk], chunking: ChunkingStrategy) -> int:
    """Tokens in the document (overlaps counted once): windows start every `max - overlap` tokens."""
    if not chunks:
        return 0
    step = chunking.max_chunk_size_tokens - chunking.chunk_overlap_tokens
    return (len(chunks) - 1) * step + chunks[-1].tokens
