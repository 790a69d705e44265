"""The blob-store seam: what every store of file bytes offers, its keys, its errors and its readers.

A blob is named by a key built from Loom's own ids (`file-…`, `upload_…/part_…`), never from client
text and never a path: keys are checked here once, for every store. Bytes move as streams of chunks
both ways, so no caller holds a whole file in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from loom.errors import ServiceUnavailable

# One segment of a key: what Loom's ids are made of. No dot, so no `.`/`..`, no hidden or temporary
# names (a local store keeps its half-written files under names with a dot: never a key).
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
MAX_KEY_LENGTH = 512
# The first segment the legacy store (`loom.store.blobs`) writes its temporary files under, in the same
# folder a local store uses by default: no key may live there, and listings skip it.
RESERVED_FIRST_SEGMENTS = frozenset({"tmp"})
# How much a stream hands over at a time, and how much a put hashes and writes at once.
CHUNK_BYTES = 1024 * 1024
# OpenAI's own words for an error on its side.
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"


class BlobStoreUnavailable(ServiceUnavailable):
    """The store of file bytes cannot be reached or failed (object storage down, a disk error).

    Shown to clients as OpenAI's `server_error` (503); `detail` says what happened, for the logs only."""

    def __init__(self, detail: str) -> None:
        super().__init__(SERVER_ERROR_MESSAGE)
        self.detail = detail

    def __str__(self) -> str:
        return f"blob store unavailable: {self.detail}"


class BlobNotFound(LookupError):
    """No blob under this key (a service decides what that means for its client)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob under key {key!r}")
        self.key = key


class InvalidBlobKey(ValueError):
    """A key that is not made of Loom ids: a bug in the caller, never a client's mistake."""


def check_key(key: str) -> str:
    """`key` if it is a valid blob key (segments of id characters joined by `/`), else InvalidBlobKey."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidBlobKey(f"not a blob key: {key!r}")
    segments = key.split("/")
    if not all(_SEGMENT.fullmatch(s) for s in segments) or segments[0] in RESERVED_FIRST_SEGMENTS:
        raise InvalidBlobKey(f"not a blob key: {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing's prefix: empty (everything) or a key (what lies under it, segment by segment)."""
    return prefix if prefix == "" else check_key(prefix.rstrip("/") if prefix.endswith("/") else prefix)


@dataclass(frozen=True)
class BlobInfo:
    """What a put stored: its size in bytes and the SHA-256 of its bytes (hex)."""

    size: int
    sha256: str


@dataclass(frozen=True)
class BlobEntry:
    """One blob of a listing: its key, size and last change (seconds since the epoch)."""

    key: str
    size: int
    modified: float


class BlobReader:
    """The bytes of one blob (or a range of it) as chunks: `size` is how many it yields in all.

    Close it (`aclose()` or `async with`) when not read to the end; it closes itself at the end."""

    def __init__(self, size: int, read: Callable[[], Awaitable[bytes]], close: Callable[[], Awaitable[None]]) -> None:
        self.size = size
        self._read = read
        self._close = close
        self._closed = False

    def __aiter__(self) -> BlobReader:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        chunk = await self._read()
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class BlobStorage(Protocol):
    """Where file bytes live: a local directory or an S3-compatible bucket (see `open_blob_storage`).

    Every method checks its key first (InvalidBlobKey). Store failures raise BlobStoreUnavailable;
    a missing blob raises BlobNotFound."""

    #: Where the bytes are, for logs and the start-up banner (no secrets).
    description: str

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        """Store the chunks under `key` as one blob, atomically: readers see all of it or nothing.
        An exception (from the chunks, the store, or a cancellation) leaves nothing behind; one raised
        by the chunks themselves propagates unchanged."""
        ...

    async def open(self, key: str, start: int = 0, end: int | None = None) -> BlobReader:
        """Stream the bytes `[start, end)` of the blob (to its end when `end` is None). Raises
        BlobNotFound here, before any byte, so a response can still answer with an error."""
        ...

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        """The bytes `[start, end)` of the blob, fewer at its end (for small reads: sniffing, headers)."""
        ...

    async def size(self, key: str) -> int:
        """The blob's size in bytes (BlobNotFound when there is none)."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove the blob; nothing to remove is no error."""
        ...

    def list(self, prefix: str = "") -> AsyncIterator[BlobEntry]:
        """Every blob under `prefix` (a key: what lies below it segment by segment; empty: all), in no
        particular order: what an orphan janitor compares with the database."""
        ...

    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A path to the blob's bytes on this machine while the context lasts, for consumers that need a
        file (sandbox copy-in, parsers): the file itself for a local store (read it, never change it),
        else a temporary copy spooled in chunks and removed afterwards."""
        ...

    async def discard_incomplete(self, older_than_s: float, key: str | None = None) -> int:
        """Remove what interrupted puts left (a crash mid-put) older than this, only that of puts of `key`
        when given (a put its owner is known to have abandoned); how many were removed."""
        ...

    async def aclose(self) -> None: ...


async def batched(chunks: AsyncIterable[bytes], size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """The chunks regrouped into pieces of about `size` bytes (small ones joined; large ones as they are),
    so that hashing and writing happen once per piece rather than once per tiny chunk."""
    pending: list[bytes] = []
    held = 0
    async for chunk in chunks:
        if not chunk:
            continue
        pending.append(bytes(chunk) if not isinstance(chunk, bytes) else chunk)
        held += len(chunk)
        if held >= size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, held = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


class Digest:
    """Size and SHA-256 of what went through a put, hashed in a worker thread (hashlib releases the GIL)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    async def update(self, data: bytes) -> None:
        self.size += len(data)
        await asyncio.to_thread(self._hash.update, data)

    def info(self) -> BlobInfo:
        return BlobInfo(self.size, self._hash.hexdigest())


async def file_chunks(path: Path, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """A local file's bytes as chunks, read in a worker thread (for `put` from a temporary file)."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, chunk_size):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


async def bytes_chunks(data: bytes, chunk_size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """Bytes already in memory as chunks (small outputs Loom makes itself)."""
    view = memoryview(data)
    for offset in range(0, len(view), chunk_size):
        yield bytes(view[offset : offset + chunk_size])


def check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"not a byte range: [{start}, {end})")
