"""Ingestion survives a crash of the server; the old `client.beta.vector_stores` SDK paths work."""

from __future__ import annotations

import json
import subprocess
import time

import openai

from tests.compat.venv import compat_python
from tests.conftest import DEFAULT_KEY, sdk_client
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for
from tests.vector_stores.conftest import ENV, big_text

# This test is about resuming ingestion that a crash cut short, whatever the embedder: the bundled WordLlama
# re-ingests the 8 MB file in seconds, where the default minilm (~60 chunks/s) took over the 120 s allowed.
RESUME_ENV = {**ENV, "LOOM_EMBEDDING_PROVIDER": "wordllama"}


def test_kill_during_ingestion_then_restart(backend: str) -> None:
    url = new_database() if backend == "postgres" else ""
    first = LoomServer(database_url=url, extra_env=RESUME_ENV).start()
    try:
        client = sdk_client(first)
        vs = client.vector_stores.create(name="crash")
        big = client.files.create(file=("big.txt", big_text(60_000, "quasar")), purpose="assistants")
        small = client.files.create(file=("small.txt", b"a small file about nebulae"), purpose="assistants")
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=big.id)
        time.sleep(0.5)  # ingestion of ~8 MB of text is under way
        assert client.vector_stores.files.retrieve(file_id=big.id, vector_store_id=vs.id).status == "in_progress"
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=small.id)
    finally:
        first.kill()

    second = LoomServer(database_url=url, data_dir=first.data_dir, extra_env=RESUME_ENV).start()
    try:
        client = sdk_client(second)

        def settled() -> bool:
            files = client.vector_stores.files.list(vector_store_id=vs.id).data
            return len(files) == 2 and all(f.status != "in_progress" for f in files)

        wait_for(settled, timeout=120, what="files left in_progress to be resumed")
        big_file = client.vector_stores.files.retrieve(file_id=big.id, vector_store_id=vs.id)
        assert big_file.status == "completed", big_file.last_error
        store = client.vector_stores.retrieve(vs.id)
        assert store.file_counts.in_progress == 0 and store.file_counts.completed == 2
        assert store.usage_bytes == big_file.usage_bytes + len(b"a small file about nebulae")
        hits = client.vector_stores.search(vs.id, query="nebulae").data
        assert hits[0].file_id == small.id
    finally:
        second.stop()


COMPAT_SCRIPT = """
import json, sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
vs = c.beta.vector_stores.create(name="old-sdk")
f = c.beta.vector_stores.files.upload_and_poll(
    vector_store_id=vs.id, file=("old.txt", b"The old SDK indexes zeppelins."), poll_interval_ms=20
)
b = c.beta.vector_stores.file_batches.upload_and_poll(
    vector_store_id=vs.id, files=[("b1.txt", b"first"), ("b2.md", b"# second")], poll_interval_ms=20
)
listed = [x.id for x in c.beta.vector_stores.files.list(vector_store_id=vs.id)]
store = c.beta.vector_stores.retrieve(vs.id)
deleted = c.beta.vector_stores.delete(vs.id)
print(json.dumps({
    "version": openai.__version__, "file_status": f.status, "batch_in_progress": b.file_counts.in_progress,
    "batch_completed": b.file_counts.completed, "listed": len(listed), "total": store.file_counts.total,
    "deleted": deleted.deleted,
}))
"""


def test_beta_vector_stores_with_openai_1_65(vs_server: LoomServer, client: openai.OpenAI) -> None:
    python = compat_python("1.65.5")
    out = subprocess.run(
        [str(python), "-c", COMPAT_SCRIPT, vs_server.base_url, DEFAULT_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "version": "1.65.5",
        "file_status": "completed",
        "batch_in_progress": 0,
        "batch_completed": 2,
        "listed": 3,
        "total": 3,
        "deleted": True,
    }
