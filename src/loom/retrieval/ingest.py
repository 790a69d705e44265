"""Ingestion: file → parse → chunk → embed → index, with typed failures for the vector store file.

Parsing and chunking run in a limited child process (`loom.retrieval.isolate`); the server streams
the chunks back a batch at a time, embeds the batch and indexes it, so its memory does not grow with
the file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.retrieval.chunking import AUTO, Chunk, ChunkingStrategy
from loom.retrieval.embedding import Embedder
from loom.retrieval.errors import FileProcessingError, IndexingFailed
from loom.retrieval.index import ChunkIndex
from loom.retrieval.isolate import ParseLimits, extract, work_dir
from loom.retrieval.rerank import embed_with_tokens

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
    path: Path | None = None,
    data: bytes | None = None,
    chunking: ChunkingStrategy = AUTO,
    attributes: Mapping[str, Any] | None = None,
    limits: ParseLimits | None = None,
) -> IngestResult:
    """Index one file (at `path`, or the bytes `data`) into one vector store, replacing its chunks there.

    Raises `UnsupportedFile` / `InvalidFile` (their `code` is `unsupported_file` / `invalid_file`) or
    `IndexingFailed` (`server_error`) for anything else that goes wrong.
    """
    if (path is None) == (data is None):
        raise ValueError("give exactly one of path and data")
    with work_dir() as tmp:
        out = Path(tmp)
        if data is not None:
            path = out / "input"
            await asyncio.to_thread(path.write_bytes, data)
        assert path is not None
        extracted = await extract(path, filename, chunking, out, limits or ParseLimits())
        written = False
        try:
            await index.delete_file(vector_store_id, file_id)
            await index.put_file(vector_store_id, file_id, filename, attributes)
            written = True
            batches = extracted.read_batches(EMBED_BATCH)
            while (batch := await asyncio.to_thread(_next, batches)) is not None:
                # MiniLM's token vectors come from the same pass, for reranking (`loom.retrieval.rerank`).
                vectors, late = await embed_with_tokens(embedder, [c.text for c in batch])
                await index.add_chunks(vector_store_id, file_id, batch, vectors, late)
        except Exception as exc:
            if written:
                # No half-indexed file stays searchable.
                try:
                    await index.delete_file(vector_store_id, file_id)
                except Exception:
                    log.exception("removing the chunks of %s from %s failed", file_id, vector_store_id)
            if isinstance(exc, FileProcessingError):
                raise
            log.exception("indexing %s into %s failed", file_id, vector_store_id)
            raise IndexingFailed("The file could not be indexed because of a server error.") from exc
    return IngestResult(
        chunks=extracted.chunks,
        tokens=extracted.tokens,
        text_bytes=extracted.text_bytes,
        kind=extracted.kind,
        pages=extracted.pages,
    )


def _next(batches: Iterator[list[Chunk]]) -> list[Chunk] | None:
    return next(batches, None)
