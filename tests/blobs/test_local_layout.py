"""The local store on disk: what a killed process left half-written is invisible and swept (that the
files folder of earlier versions is already this store's keys: tests/inprocess/test_blob_keys_migration.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from loom.store.blobstore import LocalBlobStorage, bytes_chunks
from tests.support.wait import wait_for

_KILLED_PUT = """
import asyncio, os, sys
from pathlib import Path
from loom.store.blobstore import LocalBlobStorage

async def stalls():
    yield os.urandom(3 * 1024 * 1024)
    yield os.urandom(3 * 1024 * 1024)
    print("written", flush=True)
    await asyncio.Event().wait()
    yield b""

asyncio.run(LocalBlobStorage(Path(sys.argv[1])).put("ab/file-killed", stalls()))
"""


def kill_a_put_mid_way(root: Path) -> None:
    """A process putting a blob into `root` is SIGKILLed once 6 MB of it are on disk."""
    child = subprocess.Popen([sys.executable, "-c", _KILLED_PUT, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
        partials = wait_for(lambda: list(root.rglob("*.partial")), what="the half-written file")
        wait_for(lambda: partials[0].stat().st_size >= 6 * 1024 * 1024, what="both pieces on disk")
    finally:
        os.kill(child.pid, signal.SIGKILL)  # our own child only
        child.wait(timeout=30)
        assert child.stdout is not None
        child.stdout.close()


async def test_a_put_killed_mid_way_leaves_only_a_partial_file_that_is_swept(tmp_path: Path) -> None:
    root = tmp_path / "files"
    kill_a_put_mid_way(root)
    store = LocalBlobStorage(root)
    assert not await store.exists("ab/file-killed")
    assert [e.key async for e in store.list()] == []
    await store.put("ab/file-kept", bytes_chunks(b"kept"))
    # Young leftovers may belong to a put still running in another process: kept until old enough.
    assert await store.discard_incomplete(older_than_s=3600) == 0
    assert await store.discard_incomplete(older_than_s=0) == 1
    assert list(root.rglob("*.partial")) == []
    assert [e.key async for e in store.list()] == ["ab/file-kept"]
