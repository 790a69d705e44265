"""Where file bytes live, behind one seam: a local directory or S3-compatible object storage.

`open_blob_storage(settings.effective_blob_url)` gives the store `LOOM_BLOB_URL` names:
`file:///path` (the default: the data directory's `files` folder) or `s3://bucket/prefix` (with the
standard AWS_* variables; see `S3BlobStorage`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from loom.store.blobstore.base import (
    BlobEntry,
    BlobInfo,
    BlobNotFound,
    BlobReader,
    BlobStorage,
    BlobStoreUnavailable,
    InvalidBlobKey,
    bytes_chunks,
    check_key,
    file_chunks,
)
from loom.store.blobstore.local import LocalBlobStorage
from loom.store.blobstore.s3 import BlobStoreConfigError, S3BlobStorage, S3Options

__all__ = [
    "BlobEntry",
    "BlobInfo",
    "BlobNotFound",
    "BlobReader",
    "BlobStorage",
    "BlobStoreConfigError",
    "BlobStoreUnavailable",
    "InvalidBlobKey",
    "LocalBlobStorage",
    "S3BlobStorage",
    "S3Options",
    "bytes_chunks",
    "check_key",
    "file_chunks",
    "file_key",
    "open_blob_storage",
    "part_key",
]


def file_key(file_id: str) -> str:
    """Where a File's bytes live: `<last two characters>/<id>` (the layout of Loom's files folder since
    its first version, so a local store's existing files are already keys)."""
    return check_key(f"{file_id[-2:]}/{file_id}")


def part_key(upload_id: str, part_id: str) -> str:
    """Where a part of an Upload lives until the upload is completed (or cancelled, or expires)."""
    return check_key(f"{upload_id}/{part_id}")


def open_blob_storage(
    url: str,
    *,
    env: Mapping[str, str] | None = None,
    s3_options: S3Options | None = None,
    spool_dir: Path | None = None,
) -> BlobStorage:
    """The store `url` names. `env` (default: the process environment) gives an S3 store its AWS_*
    settings; `spool_dir` is where it spools the temporary copies of `local_file` (default: the system's)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise BlobStoreConfigError(f"LOOM_BLOB_URL: a file URL names an absolute path (file:///path): {url!r}")
        return LocalBlobStorage(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if parts.query or parts.fragment:
            raise BlobStoreConfigError(f"LOOM_BLOB_URL: an s3 URL is s3://bucket/prefix, nothing more: {url!r}")
        return S3BlobStorage(parts.netloc, unquote(parts.path), env=env, options=s3_options, spool_dir=spool_dir)
    raise BlobStoreConfigError(f"LOOM_BLOB_URL: not file:///path or s3://bucket/prefix: {url!r}")
