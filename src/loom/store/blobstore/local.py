"""File bytes in a local directory: `<root>/<key>`, written atomically (temporary file, fsync, rename).

All file I/O runs in worker threads, so a large file never stalls the event loop. A key `ab/file-…ab`
is exactly where the legacy store (`loom.store.blobs`) kept a File's bytes, so its files are already
keys of this store."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import secrets
import stat
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from loom.store.blobstore.base import (
    CHUNK_BYTES,
    RESERVED_FIRST_SEGMENTS,
    BlobEntry,
    BlobInfo,
    BlobNotFound,
    BlobReader,
    BlobStoreUnavailable,
    Digest,
    batched,
    check_key,
    check_prefix,
    check_range,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
# Half-written blobs: `.<name>.<random>.partial` beside their target (a name with dots is never a key).
PARTIAL_SUFFIX = ".partial"


class _Partial:
    """A blob being written. One lock orders the writer thread and the cleanup of a cancelled put, so
    that a cleanup never closes the descriptor under a write still running in its thread."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.path = target.parent / f".{target.name}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        self.lock = threading.Lock()
        self.fd = -1

    def create(self) -> None:
        with self.lock:
            for attempt in (1, 2):
                # Twice: a delete may remove the emptied folder between the mkdir and the open.
                self.target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    return
                except FileNotFoundError:
                    if attempt == 2:
                        raise

    def write(self, data: bytes) -> None:
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

    def commit(self) -> None:
        with self.lock:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.path, self.target)
            _fsync_dir(self.target.parent)

    def discard(self) -> None:
        """Remove what was written; never raises (it runs while another error is on its way)."""
        with self.lock:
            try:
                if self.fd >= 0:
                    os.close(self.fd)
                    self.fd = -1
                self.path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                pass  # never created: nothing to remove
            except OSError as exc:
                log.warning("could not remove the half-written blob %s: %s", self.path, exc)


class _ReadHandle:
    """An open blob read with pread; the lock keeps a close from racing a read still in its thread."""

    def __init__(self, path: Path) -> None:
        self.lock = threading.Lock()
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = os.fstat(self.fd)
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a blob", str(path))
        except BaseException:
            os.close(self.fd)
            raise
        self.size = info.st_size

    def pread(self, size: int, offset: int) -> bytes:
        with self.lock:
            if self.fd < 0:
                raise ValueError("read from a closed blob reader")
            return os.pread(self.fd, size, offset)

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.description = f"local files in {self.root}"

    def _root_usable(self) -> bool:
        """The root is a folder, or is not there yet (an empty store: puts make it)."""
        try:
            return stat.S_ISDIR(self.root.stat().st_mode)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def _io(self, key: str, call: Callable[[], T]) -> T:
        """Run file I/O in a thread: a missing file is BlobNotFound, any other OS error the store failing."""
        try:
            return await asyncio.to_thread(call)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if await asyncio.to_thread(self._root_usable):
                raise BlobNotFound(key) from exc
            raise BlobStoreUnavailable(f"{self.root} is not a folder: {exc}") from exc
        except OSError as exc:
            raise BlobStoreUnavailable(f"{self.description}: {exc}") from exc

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        partial = _Partial(self._path(key))
        digest = Digest()
        try:
            await self._io(key, partial.create)
            async for piece in batched(chunks):
                await digest.update(piece)
                await self._io(key, functools.partial(partial.write, piece))
            await self._io(key, partial.commit)
        except BlobNotFound as exc:
            # The folder vanished under us (it is created on demand): a failing store, not a missing blob.
            await asyncio.shield(asyncio.to_thread(partial.discard))
            raise BlobStoreUnavailable(f"{self.description}: {exc}") from exc
        except BaseException:
            # Shielded: a second cancellation must not leave the half-written file behind.
            await asyncio.shield(asyncio.to_thread(partial.discard))
            raise
        return digest.info()

    async def open(self, key: str, start: int = 0, end: int | None = None) -> BlobReader:
        check_range(start, end)
        path = self._path(key)
        handle = await self._io(key, lambda: _ReadHandle(path))
        stop = handle.size if end is None else min(end, handle.size)
        position = [start]

        async def read() -> bytes:
            want = min(CHUNK_BYTES, stop - position[0])
            if want <= 0:
                return b""
            chunk = await self._io(key, functools.partial(handle.pread, want, position[0]))
            position[0] += len(chunk)
            return chunk

        async def close() -> None:
            await asyncio.to_thread(handle.close)

        reader = BlobReader(max(stop - start, 0), read, close)
        # A reader dropped unclosed (a client gone mid-download) still gives its descriptor back.
        weakref.finalize(reader, handle.close)
        return reader

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        check_range(start, end)
        path = self._path(key)

        def read() -> bytes:
            with path.open("rb") as handle:
                handle.seek(start)
                return handle.read(end - start)

        return await self._io(key, read)

    async def size(self, key: str) -> int:
        path = self._path(key)

        def regular_size() -> int:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a blob", str(path))
            return info.st_size

        return await self._io(key, regular_size)

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        path = self._path(key)

        def remove() -> None:
            try:
                path.unlink()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                if self._root_usable():
                    return  # no such blob: nothing to do
                raise
            # Empty folders of the key go too (a part's upload folder), never the root itself.
            parent = path.parent
            while parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    return
                parent = parent.parent

        await self._io(key, remove)

    async def list(self, prefix: str = "") -> AsyncIterator[BlobEntry]:
        check_prefix(prefix)
        if not await asyncio.to_thread(self._root_usable):
            raise BlobStoreUnavailable(f"{self.root} is not a folder")
        base = prefix.strip("/")
        folders = [self.root.joinpath(*base.split("/")) if base else self.root]
        while folders:
            folder = folders.pop()
            entries = await asyncio.to_thread(_scan, folder)
            for name, is_dir, size, modified in entries:
                relative = (folder / name).relative_to(self.root).as_posix()
                if folder == self.root and name in RESERVED_FIRST_SEGMENTS:
                    continue
                if is_dir:
                    folders.append(folder / name)
                elif "." not in name:
                    yield BlobEntry(relative, size, modified)

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        path = self._path(key)
        await self.size(key)  # BlobNotFound now, not when the consumer opens it
        yield path

    async def discard_incomplete(self, older_than_s: float, key: str | None = None) -> int:
        cutoff = time.time() - older_than_s
        if key is None:
            found = functools.partial(self.root.rglob, f".*{PARTIAL_SUFFIX}")
        else:
            target = self._path(key)
            found = functools.partial(target.parent.glob, f".{target.name}.*{PARTIAL_SUFFIX}")

        def sweep() -> int:
            removed = 0
            for path in found():
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
            return removed

        try:
            return await asyncio.to_thread(sweep)
        except OSError as exc:
            raise BlobStoreUnavailable(f"{self.description}: {exc}") from exc

    async def aclose(self) -> None:
        return None


def _scan(folder: Path) -> list[tuple[str, bool, int, float]]:
    """(name, is a folder, size, mtime) of a folder's entries; a missing folder has none."""
    out: list[tuple[str, bool, int, float]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    out.append((entry.name, True, 0, 0.0))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    out.append((entry.name, False, info.st_size, info.st_mtime))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return out
