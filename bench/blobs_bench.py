"""Blob-store throughput: put and get of one large object, local folder vs S3-compatible storage.

    .venv/bin/python -m bench.blobs_bench [--mb 64] [--repeat 5]

Puts an object of `--mb` MB (fed in 1 MiB chunks from memory, so the source costs nothing) into each
store and streams it back, `--repeat` times, and prints the median seconds and MB/s of each. The S3 store
is a real SeaweedFS started on loopback (as the tests do), so its figures include signing, HTTP and
SeaweedFS's own writes on the same disk. Baseline, measured in the same run on the same folder: a plain
write (+ fsync) and read of the same bytes with no store in between.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from tests.support.seaweed import SeaweedS3

from loom.store.blobstore import BlobStorage, S3Options, open_blob_storage

MB = 1024 * 1024


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(view), MB):
        yield bytes(view[offset : offset + MB])


def plain_write(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        view = memoryview(data)
        for offset in range(0, len(view), MB):
            out.write(view[offset : offset + MB])
        out.flush()
        os.fsync(out.fileno())


def plain_read(path: Path) -> int:
    total = 0
    with path.open("rb") as src:
        while block := src.read(MB):
            total += len(block)
    return total


async def timed(repeat: int, run: Callable[[int], Awaitable[object]]) -> float:
    """Median seconds of `repeat` runs (each given its index)."""
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        await run(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def store_rows(name: str, store: BlobStorage, data: bytes, repeat: int) -> list[tuple[str, str, float]]:
    async def put(i: int) -> None:
        await store.put(f"bench/file-{i}", chunks(data))

    async def get(i: int) -> None:
        total = 0
        async with await store.open(f"bench/file-{i}") as reader:
            async for chunk in reader:
                total += len(chunk)
        assert total == len(data)

    rows = [(name, "put", await timed(repeat, put)), (name, "get", await timed(repeat, get))]
    for i in range(repeat):
        await store.delete(f"bench/file-{i}")
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = os.urandom(args.mb * MB)
    folder = Path(tempfile.mkdtemp(prefix="loom-blobs-bench-"))
    rows: list[tuple[str, str, float]] = []

    async def write(i: int) -> None:
        await asyncio.to_thread(plain_write, folder / f"plain-{i}", data)

    async def read(i: int) -> None:
        assert await asyncio.to_thread(plain_read, folder / f"plain-{i}") == len(data)

    rows += [("plain file (baseline)", "put", await timed(args.repeat, write))]
    rows += [("plain file (baseline)", "get", await timed(args.repeat, read))]
    rows += await store_rows("local", open_blob_storage((folder / "files").as_uri()), data, args.repeat)
    with SeaweedS3() as server:
        s3 = open_blob_storage(server.url("bench"), env=server.env, s3_options=S3Options())
        rows += await store_rows("s3 (SeaweedFS, loopback)", s3, data, args.repeat)
    baseline = {op: seconds for name, op, seconds in rows if name.startswith("plain")}
    print(f"\n{args.mb} MB object, median of {args.repeat}")
    print(f"{'store':28} {'op':4} {'seconds':>8} {'MB/s':>8} {'x baseline':>11}")
    for name, op, seconds in rows:
        print(f"{name:28} {op:4} {seconds:8.3f} {args.mb / seconds:8.0f} {seconds / baseline[op]:11.2f}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
