"""The chunk index protocol, shared by the SQLite and PostgreSQL implementations.

An index stores chunks (text, position, vector) of files in vector stores, keeps each file's
`attributes` for filtering, and answers two kinds of candidate queries: nearest vectors (cosine)
and keyword matches (BM25 / ts_rank). Fusing them is `loom.retrieval.search`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from loom.retrieval.chunking import Chunk
from loom.retrieval.embedding import Vectors

Attributes = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Candidate:
    chunk_id: int
    score: float  # raw: cosine similarity for vectors, a positive relevance for keywords


@dataclass(frozen=True, slots=True)
class StoredChunk:
    chunk_id: int
    vector_store_id: str
    file_id: str
    filename: str
    chunk_index: int
    start: int
    end: int
    text: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FileEntry:
    vector_store_id: str
    file_id: str
    filename: str
    attributes: dict[str, Any]


@runtime_checkable
class ChunkIndex(Protocol):
    async def create_schema(self) -> None:
        """Create the tables if missing (tests, and deployments that do not run migrations)."""
        ...

    async def put_file(
        self, vector_store_id: str, file_id: str, filename: str, attributes: Attributes | None = None
    ) -> None:
        """Register (or re-register) a file of a store; its chunks are added with `add_chunks`."""
        ...

    async def set_attributes(self, vector_store_id: str, file_id: str, attributes: Attributes | None) -> None: ...

    async def add_chunks(
        self,
        vector_store_id: str,
        file_id: str,
        chunks: Sequence[Chunk],
        vectors: Vectors,
        late_tokens: Sequence[bytes | None] | None = None,
    ) -> None:
        """`late_tokens`: each chunk's compact token vectors for reranking (`loom.retrieval.rerank`), or None."""
        ...

    async def delete_file(self, vector_store_id: str, file_id: str) -> int:
        """Remove a file's chunks and entry from a store; returns the number of chunks removed."""
        ...

    async def delete_store(self, vector_store_id: str) -> int:
        """Remove every chunk and file entry of a store; returns the number of chunks removed."""
        ...

    async def list_files(self, vector_store_ids: Sequence[str]) -> list[FileEntry]: ...

    async def file_chunks(self, vector_store_id: str, file_id: str) -> list[StoredChunk]:
        """A file's chunks in order (for the file content endpoint)."""
        ...

    async def vector_candidates(
        self,
        vector_store_ids: Sequence[str],
        vector: Vectors,
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]: ...

    async def keyword_candidates(
        self,
        vector_store_ids: Sequence[str],
        terms: Sequence[str],
        limit: int,
        file_ids: Collection[str] | None = None,
    ) -> list[Candidate]: ...

    async def get_chunks(self, chunk_ids: Collection[int]) -> dict[int, StoredChunk]: ...

    async def late_tokens(self, chunk_ids: Collection[int]) -> dict[int, bytes]:
        """The stored token vectors of those of `chunk_ids` that have them."""
        ...


# A short English stop list: these words only add noise to an OR-query over BM25.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves""".split()  # noqa: SIM905
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def query_terms(query: str, max_terms: int = 64) -> list[str]:
    """Lower-cased distinct words of a query, stop words removed (all words if only stop words)."""
    words = [w.lower() for w in _WORD.findall(query)]
    kept = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(kept))[:max_terms]
