"""The two blob stores under test: a local folder and a real S3-compatible server (SeaweedFS, the session's
`seaweed` fixture of tests/conftest.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loom.store.blobstore import BlobStorage, open_blob_storage
from tests.support.seaweed import FAST_FAIL, SeaweedS3


@pytest.fixture(params=["local", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def storage(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BlobStorage]:
    """A fresh, empty store of `kind`: its own folder, or its own prefix in the test bucket."""
    if kind == "local":
        store = open_blob_storage((tmp_path / "files").as_uri())
    else:
        server: SeaweedS3 = request.getfixturevalue("seaweed")
        prefix = "t-" + secrets.token_hex(6)
        store = open_blob_storage(server.url(prefix), env=server.env, s3_options=FAST_FAIL, spool_dir=tmp_path)
    yield store
    await store.aclose()
