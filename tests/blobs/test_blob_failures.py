"""When the store fails: object storage unreachable or dying mid-transfer, a local folder that cannot be
used. Always BlobStoreUnavailable (OpenAI's `server_error`, 503), quickly, and no half-written blob."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loom.store.blobstore import (
    BlobStorage,
    BlobStoreUnavailable,
    S3BlobStorage,
    bytes_chunks,
    open_blob_storage,
)
from tests.support.seaweed import BUCKET, FAST_FAIL, SeaweedS3
from tests.support.server import free_port

MB = 1024 * 1024


async def fresh_chunks(megabytes: int) -> AsyncIterator[bytes]:
    """A large upload as it arrives: new bytes each time, none kept by the source."""
    for _ in range(megabytes):
        yield os.urandom(MB)


def operations(store: BlobStorage) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    async def list_all() -> list[Any]:
        return [e async for e in store.list()]

    async def spool() -> None:
        async with store.local_file("file-x"):
            pass

    return [
        ("put", lambda: store.put("file-x", fresh_chunks(12))),
        ("open", lambda: store.open("file-x")),
        ("read_range", lambda: store.read_range("file-x", 0, 10)),
        ("size", lambda: store.size("file-x")),
        ("exists", lambda: store.exists("file-x")),
        ("delete", lambda: store.delete("file-x")),
        ("list", list_all),
        ("local_file", spool),
    ]


async def test_unreachable_object_storage_is_unavailable_quickly() -> None:
    # Nothing listens on the port: every operation fails with the typed error, after bounded retries.
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    store = open_blob_storage(f"s3://{BUCKET}/p", env=env, s3_options=FAST_FAIL)
    for name, call in operations(store):
        started = time.monotonic()
        with pytest.raises(BlobStoreUnavailable) as caught:
            await call()
        assert time.monotonic() - started < 10, name
        # What a client sees: OpenAI's server_error shape, 503; the cause stays in the logs.
        assert caught.value.status == 503
        assert caught.value.body() == {
            "error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        assert "127.0.0.1" in caught.value.detail


async def test_a_local_folder_that_cannot_be_used_is_unavailable(tmp_path: Path) -> None:
    # The configured folder lies under a regular file: no operation can work (like a disk gone).
    (tmp_path / "not-a-folder").write_bytes(b"")
    store = open_blob_storage((tmp_path / "not-a-folder" / "files").as_uri())
    for name, call in operations(store):
        with pytest.raises(BlobStoreUnavailable):
            await call()
            raise AssertionError(name)


@pytest.fixture
def private_seaweed() -> Iterator[SeaweedS3]:
    """A server of this test's own, to kill."""
    with SeaweedS3() as server:
        yield server


async def test_object_storage_dying_mid_transfer(private_seaweed: SeaweedS3) -> None:
    store = S3BlobStorage(BUCKET, "dying", env=private_seaweed.env, options=FAST_FAIL)
    await store.put("file-big", fresh_chunks(48))
    reader = await store.open("file-big")
    first = await reader.__anext__()
    assert first

    async def killed_midway() -> AsyncIterator[bytes]:
        async for chunk in fresh_chunks(11):
            yield chunk
        await asyncio.sleep(0.5)  # the first parts are stored
        await asyncio.to_thread(private_seaweed.kill)
        async for chunk in fresh_chunks(11):
            yield chunk

    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable):
        await store.put("file-half", killed_midway())
    assert time.monotonic() - started < 20
    # The download that was under way fails too (with the typed error, not a bare OSError) once the
    # bytes already in flight are read.
    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable):
        async with reader:
            async for _ in reader:
                pass
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_memory_stays_flat_on_a_large_put(kind: str, storage: BlobStorage) -> None:
    # 96 MB through the store; Python's allocations (tracemalloc) and the process's resident memory
    # (sampled: obstore's buffers are outside Python) grow by a bounded amount: a few parts, never the file.
    def resident() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))

    base = resident()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    tracemalloc.start()
    try:
        info = await storage.put("file-large", fresh_chunks(96))
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        done.set()
        sampler.join()
    assert info.size == 96 * MB
    assert traced_peak < 32 * MB, f"Python allocations peaked at {traced_peak / MB:.1f} MB"
    assert peak[0] - base < 48 * MB, f"resident memory grew by {(peak[0] - base) / MB:.1f} MB"


async def test_bytes_chunks_and_a_small_object(storage: BlobStorage) -> None:
    info = await storage.put("file-small", bytes_chunks(b"hello"))
    assert info.size == 5
    assert await storage.read_range("file-small", 1, 3) == b"el"
