"""The blob-store seam, the same tests for both stores: a local folder and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loom.store.blobstore import (
    BlobNotFound,
    BlobStorage,
    InvalidBlobKey,
    LocalBlobStorage,
    bytes_chunks,
    file_chunks,
)
from tests.support.seaweed import SeaweedS3

MB = 1024 * 1024


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """`data` as a client's upload arrives: many small chunks."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def read_all(storage: BlobStorage, key: str, start: int = 0, end: int | None = None) -> bytes:
    async with await storage.open(key, start, end) as reader:
        out = b"".join([chunk async for chunk in reader])
    assert len(out) == reader.size
    return out


def leftovers(storage: BlobStorage, request: pytest.FixtureRequest) -> list[str]:
    """What interrupted puts left: half-written files of a local store, open multipart uploads on S3."""
    if isinstance(storage, LocalBlobStorage):
        return [str(p) for p in storage.root.rglob("*") if p.is_file() and "." in p.name]
    server: SeaweedS3 = request.getfixturevalue("seaweed")
    return server.pending_uploads()


@pytest.mark.parametrize("size", [0, 1000, 12 * MB])
async def test_round_trip_keeps_size_and_hash(storage: BlobStorage, size: int) -> None:
    # 12 MB is three parts of 5 MB on S3 (a multipart upload), the last one short.
    data = os.urandom(size)
    info = await storage.put(f"ab/file-r{size}", chunks_of(data))
    assert (info.size, info.sha256) == (size, hashlib.sha256(data).hexdigest())
    assert await storage.size(f"ab/file-r{size}") == size
    assert await storage.exists(f"ab/file-r{size}")
    got = await read_all(storage, f"ab/file-r{size}")
    assert hashlib.sha256(got).hexdigest() == info.sha256


async def test_open_streams_in_chunks_and_by_range(storage: BlobStorage) -> None:
    data = os.urandom(3 * MB + 17)
    await storage.put("file-stream", bytes_chunks(data))
    async with await storage.open("file-stream") as reader:
        assert reader.size == len(data)
        sizes = [len(chunk) async for chunk in reader]
    assert len(sizes) > 1 and max(sizes) <= 2 * MB and sum(sizes) == len(data)
    assert await read_all(storage, "file-stream", 1000, 2 * MB + 5) == data[1000 : 2 * MB + 5]
    assert await read_all(storage, "file-stream", 3 * MB) == data[3 * MB :]
    # An end past the blob stops at its end; a start at or past it streams nothing.
    assert await read_all(storage, "file-stream", len(data) - 3, len(data) + 100) == data[-3:]
    assert await read_all(storage, "file-stream", len(data) + 5) == b""


async def test_read_range(storage: BlobStorage) -> None:
    data = os.urandom(10_000)
    await storage.put("file-range", bytes_chunks(data))
    assert await storage.read_range("file-range", 0, 8) == data[:8]
    assert await storage.read_range("file-range", 5000, 5100) == data[5000:5100]
    assert await storage.read_range("file-range", 9990, 20_000) == data[9990:]
    assert await storage.read_range("file-range", 10_000, 10_010) == b""
    assert await storage.read_range("file-range", 7, 7) == b""
    with pytest.raises(ValueError):
        await storage.read_range("file-range", 10, 5)


async def test_a_missing_blob_is_not_found(storage: BlobStorage) -> None:
    with pytest.raises(BlobNotFound):
        await storage.open("file-nothing")
    with pytest.raises(BlobNotFound):
        await storage.read_range("file-nothing", 0, 10)
    with pytest.raises(BlobNotFound):
        await storage.size("file-nothing")
    assert not await storage.exists("file-nothing")
    with pytest.raises(BlobNotFound):
        async with storage.local_file("file-nothing"):
            pass


async def test_delete_is_idempotent(storage: BlobStorage) -> None:
    await storage.put("xy/file-del", bytes_chunks(b"bytes"))
    await storage.delete("xy/file-del")
    assert not await storage.exists("xy/file-del")
    await storage.delete("xy/file-del")
    await storage.delete("file-never-was")
    # A key above others ("xy") is no blob: deleting it removes nothing below it.
    await storage.put("xy/file-stays", bytes_chunks(b"s"))
    await storage.delete("xy")
    assert await storage.exists("xy/file-stays")


async def test_list_by_prefix(storage: BlobStorage) -> None:
    for key, body in [
        ("parts/upload_a/part_1", b"1"),
        ("parts/upload_a/part_2", b"22"),
        ("parts/upload_ab/part_3", b"333"),
        ("ab/file-x", b"4444"),
    ]:
        await storage.put(key, bytes_chunks(body))
    everything = {e.key: e.size async for e in storage.list()}
    assert everything == {
        "parts/upload_a/part_1": 1,
        "parts/upload_a/part_2": 2,
        "parts/upload_ab/part_3": 3,
        "ab/file-x": 4,
    }
    # Segment by segment: `upload_a` is not a prefix of `upload_ab`.
    assert {e.key async for e in storage.list("parts/upload_a")} == {"parts/upload_a/part_1", "parts/upload_a/part_2"}
    assert {e.key async for e in storage.list("parts/upload_a/")} == {"parts/upload_a/part_1", "parts/upload_a/part_2"}
    assert [e.key async for e in storage.list("nothing")] == []
    assert all([e.modified > 0 async for e in storage.list()])


@pytest.mark.parametrize(
    "key",
    [
        *["", "../x", "ab/../../x", "/etc/passwd", "a//b", "ab/", ".hidden", "ab/.x", "a b", "ab/fil\x00e", "é"],
        *["tmp/x", "a" * 129, "/".join(["abc"] * 200)],
    ],
)
async def test_keys_are_ids_never_paths(storage: BlobStorage, key: str, tmp_path: Path) -> None:
    before = sorted(tmp_path.parent.rglob("*"))
    with pytest.raises(InvalidBlobKey):
        await storage.put(key, bytes_chunks(b"x"))
    for call in (storage.open, storage.size, storage.exists, storage.delete):
        with pytest.raises(InvalidBlobKey):
            await call(key)
    with pytest.raises(InvalidBlobKey):
        await storage.read_range(key, 0, 1)
    if key not in ("", "ab/"):  # a listing's prefix may be empty (everything) or end with a slash
        with pytest.raises(InvalidBlobKey):
            [e async for e in storage.list(key)]
    assert sorted(tmp_path.parent.rglob("*")) == before


class Boom(Exception):
    pass


@pytest.mark.parametrize("at", [0, 3 * MB, 12 * MB])
async def test_a_put_interrupted_by_an_exception_leaves_nothing(
    storage: BlobStorage, request: pytest.FixtureRequest, at: int
) -> None:
    # Before any byte, after part of the first part, and after parts were uploaded (S3: an upload to abort).
    async def failing() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(os.urandom(at), MB):
            yield chunk
        raise Boom

    with pytest.raises(Boom):
        await storage.put(f"file-boom{at}", failing())
    assert not await storage.exists(f"file-boom{at}")
    assert [e.key async for e in storage.list()] == []
    assert leftovers(storage, request) == []


async def test_a_cancelled_put_leaves_nothing(storage: BlobStorage, request: pytest.FixtureRequest) -> None:
    sent = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(os.urandom(11 * MB), MB):
            yield chunk
        sent.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b""

    put = asyncio.create_task(storage.put("file-cancelled", stalls()))
    await asyncio.wait_for(sent.wait(), 30)
    await asyncio.sleep(0.5)  # the parts reach the store
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert not await storage.exists("file-cancelled")
    assert leftovers(storage, request) == []


async def test_local_file_gives_a_path_to_the_bytes(storage: BlobStorage, tmp_path: Path) -> None:
    data = os.urandom(2 * MB + 3)
    await storage.put("file-local", bytes_chunks(data))
    async with storage.local_file("file-local") as path:
        assert path.read_bytes() == data
    if not isinstance(storage, LocalBlobStorage):
        assert not path.exists()  # the spooled copy is gone
        assert list(tmp_path.iterdir()) == []


async def test_put_from_a_local_file(storage: BlobStorage, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(3 * MB))
    info = await storage.put("file-from-path", file_chunks(source))
    assert info.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert await read_all(storage, "file-from-path") == source.read_bytes()


async def test_a_reader_dropped_mid_stream_leaks_nothing(storage: BlobStorage) -> None:
    # A client that goes away mid-download: its reader is dropped without being closed.
    await storage.put("file-dropped", bytes_chunks(os.urandom(4 * MB)))
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        reader = await storage.open("file-dropped")
        assert await reader.__anext__()
        del reader
    gc.collect()
    await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= descriptors + 2
