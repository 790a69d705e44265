"""`LOOM_BLOB_URL` chooses the store: file:///path (default: the data directory's files folder) or
s3://bucket/prefix with the standard AWS_* variables; a URL that names no usable store is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.config import Settings, SettingsError
from loom.store.blobstore import (
    BlobStoreConfigError,
    BlobStoreUnavailable,
    LocalBlobStorage,
    S3BlobStorage,
    bytes_chunks,
    open_blob_storage,
)
from tests.support.seaweed import FAST_FAIL, SeaweedS3


def test_the_default_is_the_data_dirs_files_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOM_BLOB_URL", raising=False)
    monkeypatch.setenv("LOOM_DATA_DIR", str(tmp_path))
    settings = Settings.load()
    assert settings.effective_blob_url == (tmp_path / "files").as_uri()
    store = open_blob_storage(settings.effective_blob_url)
    assert isinstance(store, LocalBlobStorage) and store.root == tmp_path / "files"
    # `loom config show` tells where the bytes go even when nothing was set.
    shown = {name: value for name, value, _ in settings.effective()}
    assert shown["blob_url"] == f"(local) {(tmp_path / 'files').as_uri()}"


def test_the_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_BLOB_URL", "s3://bucket/loom")
    assert Settings.load().effective_blob_url == "s3://bucket/loom"
    monkeypatch.setenv("LOOM_BLOB_URL", "/var/lib/loom/files")
    with pytest.raises(SettingsError, match="LOOM_BLOB_URL"):
        Settings.load()


@pytest.mark.parametrize(
    "url",
    ["files", "file://host/x", "file:relative/x", "s3://", "s3:///prefix", "s3://b/../x", "s3://b/p?x=1", "gs://b/p"],
)
def test_urls_that_name_no_store_are_refused(url: str) -> None:
    with pytest.raises(BlobStoreConfigError):
        open_blob_storage(url, env={})


def test_plain_http_only_on_loopback_unless_allowed() -> None:
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    for endpoint in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000", "https://s3.example"):
        store = open_blob_storage("s3://b/p", env={**keys, "AWS_ENDPOINT_URL": endpoint})
        assert isinstance(store, S3BlobStorage) and endpoint in store.description
    with pytest.raises(BlobStoreConfigError, match="AWS_ALLOW_HTTP"):
        open_blob_storage("s3://b/p", env={**keys, "AWS_ENDPOINT_URL": "http://minio.internal:9000"})
    allowed = {**keys, "AWS_ENDPOINT_URL": "http://minio.internal:9000", "AWS_ALLOW_HTTP": "true"}
    assert isinstance(open_blob_storage("s3://b/p", env=allowed), S3BlobStorage)
    with pytest.raises(BlobStoreConfigError):
        open_blob_storage("s3://b/p", env={**keys, "AWS_ENDPOINT_URL": "ftp://x"})


async def test_the_aws_variables_reach_the_server(seaweed: SeaweedS3) -> None:
    # Right keys: it works; a wrong secret: the store refuses us, which is the store being unusable.
    store = open_blob_storage(seaweed.url("cfg"), env=seaweed.env, s3_options=FAST_FAIL)
    assert (await store.put("file-cfg", bytes_chunks(b"x"))).size == 1
    wrong = open_blob_storage(
        seaweed.url("cfg"), env={**seaweed.env, "AWS_SECRET_ACCESS_KEY": "wrong"}, s3_options=FAST_FAIL
    )
    with pytest.raises(BlobStoreUnavailable):
        await wrong.size("file-cfg")
    # The prefix is the store's own corner of the bucket.
    other = open_blob_storage(seaweed.url("elsewhere"), env=seaweed.env, s3_options=FAST_FAIL)
    assert not await other.exists("file-cfg")
    assert [e.key async for e in store.list()] == ["file-cfg"]
