"""File bytes in an S3-compatible bucket (AWS, MinIO, Ceph, R2, SeaweedFS, …) through `obstore`.

Puts stream as multipart uploads of `part_size` parts with at most `max_concurrency` in flight (memory
per put stays near part_size x (max_concurrency + 1), whatever the file's size); a put that fails or is
cancelled aborts its upload, so no object and no stored part is left (a crash of the whole process can
still leave parts: give the bucket a lifecycle rule that aborts incomplete multipart uploads). Reads
stream. Every failure of the store becomes BlobStoreUnavailable within bounded retries and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import obstore
from obstore.store import S3Store

from loom.store.blobstore.base import (
    CHUNK_BYTES,
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

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

_LOOPBACK = ("localhost", "127.", "::1", "[::1]")


class BlobStoreConfigError(ValueError):
    """`LOOM_BLOB_URL` or the AWS_* variables describe no usable store (told at start, one line)."""


@dataclass(frozen=True)
class S3Options:
    """How an S3 store moves bytes and how long it tries before it gives up."""

    # Multipart parts: S3 wants at least 5 MiB (but the last); memory per put ~ part_size x (in flight + 1).
    part_size: int = 8 * 1024 * 1024
    max_concurrency: int = 4
    connect_timeout_s: float = 5.0
    # No byte for this long on a connection: it is dead (retried, then unavailable).
    read_timeout_s: float = 30.0
    # One whole request, a streamed download included: generous, the read timeout catches stalls.
    request_timeout_s: float = 3600.0
    max_retries: int = 3
    retry_timeout_s: float = 20.0


def _is_loopback(host: str) -> bool:
    return host.startswith(_LOOPBACK)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _clean_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise BlobStoreConfigError(f"LOOM_BLOB_URL: not a usable prefix in the bucket: {prefix!r}")
    return prefix


class S3BlobStorage:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        env: Mapping[str, str] | None = None,
        options: S3Options | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        """A store in `bucket` under `prefix`, configured by the standard AWS variables of `env`
        (default: the process environment): AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION), and AWS_ALLOW_HTTP
        for a plain-http endpoint that is not on loopback (on loopback it is allowed as it is)."""
        env = os.environ if env is None else env
        self.options = options or S3Options()
        self.spool_dir = spool_dir
        if not bucket:
            raise BlobStoreConfigError("LOOM_BLOB_URL: an s3:// URL needs a bucket (s3://bucket/prefix)")
        prefix = _clean_prefix(prefix)
        config: S3Config = {"region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
        allow_http = False
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise BlobStoreConfigError(f"AWS_ENDPOINT_URL: not an http(s) URL: {endpoint!r}")
            if parts.scheme == "http":
                allow_http = _is_loopback(parts.hostname) or _truthy(env.get("AWS_ALLOW_HTTP"))
                if not allow_http:
                    raise BlobStoreConfigError(
                        f"AWS_ENDPOINT_URL {endpoint} is plain http to another machine: use https, or set "
                        "AWS_ALLOW_HTTP=true to send the bytes unencrypted"
                    )
            config["endpoint"] = endpoint.rstrip("/")
        for name, field in (
            ("AWS_ACCESS_KEY_ID", "access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
            ("AWS_SESSION_TOKEN", "session_token"),
        ):
            if env.get(name):
                config[field] = env[name]  # type: ignore[literal-required]
        o = self.options
        client: ClientConfig = {
            "allow_http": allow_http,
            "connect_timeout": timedelta(seconds=o.connect_timeout_s),
            "read_timeout": timedelta(seconds=o.read_timeout_s),
            "timeout": timedelta(seconds=o.request_timeout_s),
        }
        retry: RetryConfig = {
            "max_retries": o.max_retries,
            "retry_timeout": timedelta(seconds=o.retry_timeout_s),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        self._store = S3Store(bucket, prefix=prefix or None, config=config, client_options=client, retry_config=retry)
        where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.description = f"object storage {where}" + (f" at {config['endpoint']}" if endpoint else "")

    def _unavailable(self, exc: BaseException) -> BlobStoreUnavailable:
        return BlobStoreUnavailable(f"{self.description}: {type(exc).__name__}: {exc}")

    async def _call(self, key: str, awaitable: Any) -> Any:
        """Await one obstore call: a missing object is BlobNotFound, any other failure unavailable."""
        try:
            return await awaitable
        except FileNotFoundError as exc:  # obstore's NotFoundError is one
            raise BlobNotFound(key) from exc
        except (obstore.exceptions.BaseError, OSError, RuntimeError) as exc:
            raise self._unavailable(exc) from exc

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> BlobInfo:
        check_key(key)
        o = self.options
        writer = obstore.open_writer_async(self._store, key, buffer_size=o.part_size, max_concurrency=o.max_concurrency)
        digest = Digest()
        try:
            async for piece in batched(chunks):
                await digest.update(piece)
                await self._call(key, writer.write(piece))
            await self._call(key, writer.close())
        except BaseException as exc:
            # Abort the multipart upload (its parts go too); shielded so that a second cancellation cannot
            # skip it, bounded so that a dead store cannot hold the caller. Nothing to abort after a close.
            with contextlib.suppress(Exception):
                abort = writer.__aexit__(type(exc), exc, exc.__traceback__)
                await asyncio.wait_for(asyncio.shield(abort), self.options.retry_timeout_s)
            raise
        return digest.info()

    async def open(self, key: str, start: int = 0, end: int | None = None) -> BlobReader:
        check_key(key)
        check_range(start, end)
        if start == 0 and end is None:
            result = await self._call(key, obstore.get_async(self._store, key))
            size = int(result.meta["size"])
        else:
            total = await self.size(key)
            stop = total if end is None else min(end, total)
            if start >= stop:
                return BlobReader(0, _nothing, _nothing_to_close)
            result = await self._call(key, obstore.get_async(self._store, key, options={"range": (start, stop)}))
            size = stop - start
        stream = result.stream(min_chunk_size=CHUNK_BYTES)

        async def read() -> bytes:
            try:
                return bytes(await self._call(key, stream.__anext__()))
            except StopAsyncIteration:
                return b""

        return BlobReader(size, read, _nothing_to_close)

    async def read_range(self, key: str, start: int, end: int) -> bytes:
        check_key(key)
        check_range(start, end)
        if start == end:
            return b""
        try:
            return bytes(await self._call(key, obstore.get_range_async(self._store, key, start=start, end=end)))
        except BlobStoreUnavailable:
            # A range that starts at or past the end is an S3 error (416): here it is just no bytes.
            if start >= await self.size(key):
                return b""
            raise

    async def size(self, key: str) -> int:
        check_key(key)
        meta = await self._call(key, obstore.head_async(self._store, key))
        return int(meta["size"])

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
        except BlobNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        check_key(key)
        with contextlib.suppress(BlobNotFound):
            await self._call(key, obstore.delete_async(self._store, key))

    async def list(self, prefix: str = "") -> AsyncIterator[BlobEntry]:
        check_prefix(prefix)
        stream = obstore.list(self._store, prefix=prefix.strip("/") or None, chunk_size=1000)
        while True:
            try:
                batch = await self._call(prefix, stream.__anext__())
            except StopAsyncIteration:
                return
            for meta in batch:
                yield BlobEntry(str(meta["path"]), int(meta["size"]), meta["last_modified"].timestamp())

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        async with await self.open(key) as reader:
            fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="loom-blob-", dir=self.spool_dir)
            path = Path(name)
            try:
                with os.fdopen(fd, "wb") as spool:
                    async for chunk in reader:
                        await asyncio.to_thread(spool.write, chunk)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(path.unlink, True))
                raise
        try:
            yield path
        finally:
            await asyncio.shield(asyncio.to_thread(path.unlink, True))

    async def discard_incomplete(self, older_than_s: float, key: str | None = None) -> int:
        # Interrupted puts abort their own uploads; what a killed process left is for the bucket's
        # lifecycle rule (obstore lists no multipart uploads).
        return 0

    async def aclose(self) -> None:
        return None


async def _nothing() -> bytes:
    return b""


async def _nothing_to_close() -> None:
    return None
