"""`loom blobs migrate --to s3://…`: a local store's objects copied into object storage and verified; the
server then serves the same Files from there (its database unchanged), and a rerun copies nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from loom.admin.blob_migrate import digest_of
from loom.store.blobstore import LocalBlobStorage, file_key, open_blob_storage
from tests.conftest import s3_blob_env, sdk_client
from tests.support.seaweed import FAST_FAIL, SeaweedS3
from tests.support.server import LoomServer


def _loom(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loom.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_copies_and_verifies_every_object(seaweed: SeaweedS3) -> None:
    local = LoomServer().start()
    try:
        client = sdk_client(local)
        texts = {name: os.urandom(size) for name, size in (("a.bin", 10), ("b.bin", 3 * 1024 * 1024 + 7))}
        ids = {name: client.files.create(file=(name, data), purpose="assistants").id for name, data in texts.items()}
    finally:
        local.stop()
    blob_env = s3_blob_env(seaweed)
    env = {"LOOM_DATA_DIR": str(local.data_dir), **seaweed.env}
    done = _loom("blobs", "migrate", "--to", blob_env["LOOM_BLOB_URL"], env=env)
    assert done.returncode == 0, done.stderr
    assert "copied 2 objects" in done.stdout and "verified by size and sha256" in done.stdout, done.stdout
    target = open_blob_storage(blob_env["LOOM_BLOB_URL"], env=seaweed.env, s3_options=FAST_FAIL)
    source = LocalBlobStorage(local.data_dir / "files")
    for file_id in ids.values():
        assert await digest_of(target, file_key(file_id)) == await digest_of(source, file_key(file_id))
    again = _loom("blobs", "migrate", "--to", blob_env["LOOM_BLOB_URL"], env=env)
    assert again.returncode == 0 and "copied 0 objects" in again.stdout
    assert "already present and identical: 2" in again.stdout, again.stdout

    # The local copies gone, the server on the same database serves the Files from object storage.
    for file_id in ids.values():
        shutil.rmtree(local.data_dir / "files" / file_key(file_id).split("/")[0])
    served = LoomServer(data_dir=local.data_dir, extra_env=blob_env).start()
    try:
        client = sdk_client(served)
        for name, data in texts.items():
            assert client.files.content(ids[name]).content == data
    finally:
        served.stop()


def test_migrate_refuses_a_target_that_is_not_a_store(tmp_path: Path) -> None:
    done = _loom("blobs", "migrate", "--to", "ftp://elsewhere/x", env={"LOOM_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "LOOM_BLOB_URL" in done.stderr
