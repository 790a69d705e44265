"""A representative set of the file, upload, vector-store and code-interpreter contract tests, run again
(in every `make test`) against a server whose file bytes live in object storage: `LOOM_BLOB_URL=s3://…` on
a real SeaweedFS, PostgreSQL for the rest. The tests are the suites' own functions, imported here; the
fixtures below give them that server instead of the suites' own (which use the local store). The whole
suites run on S3 with `LOOM_TEST_BLOB=s3` (that switches the shared contract server only).

Listed in the README (Tests): keep the two in step."""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.code_interpreter.conftest import CI_ENV, require_sandbox
from tests.code_interpreter.test_runs import (
    test_csv_given_to_the_code,
    test_written_file_is_a_file_path_annotation,
)
from tests.conftest import DEFAULT_KEY, s3_blob_env, sdk_client
from tests.contract.conftest import check_global_rules, raw_client
from tests.contract.test_files import (
    test_download_content_type_is_binary,
    test_empty_file,
    test_upload_retrieve_download_delete,
)
from tests.contract.test_uploads import (
    test_cancel,
    test_concurrent_completions_make_one_file,
    test_md5,
    test_parts_are_joined_in_the_order_given,
)
from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for
from tests.support.seaweed import SeaweedS3
from tests.support.server import LoomServer
from tests.vector_stores.conftest import ENV as VS_ENV
from tests.vector_stores.test_file_search_runs import test_run_searches_and_cites
from tests.vector_stores.test_stores import (
    test_deleting_a_file_removes_it_from_every_store,
    test_each_parser_through_the_api,
    test_upload_and_poll_counts_usage_and_content,
)

# It starts kernels and runs on PostgreSQL (the tiers of tests/support/tiers.py cannot tell from here).
pytestmark = [pytest.mark.sandbox, pytest.mark.postgres]

# What runs here (pytest collects the imported functions as tests of this module).
__all__ = [
    "test_cancel",
    "test_concurrent_completions_make_one_file",
    "test_csv_given_to_the_code",
    "test_deleting_a_file_removes_it_from_every_store",
    "test_download_content_type_is_binary",
    "test_each_parser_through_the_api",
    "test_empty_file",
    "test_md5",
    "test_parts_are_joined_in_the_order_given",
    "test_run_searches_and_cites",
    "test_upload_and_poll_counts_usage_and_content",
    "test_upload_retrieve_download_delete",
    "test_written_file_is_a_file_path_annotation",
]


@pytest.fixture(scope="module")
def s3_server(seaweed: SeaweedS3, upstream: FakeUpstream) -> Iterator[LoomServer]:
    require_sandbox()
    env = {**CI_ENV, **VS_ENV, **s3_blob_env(seaweed)}
    with LoomServer(
        database_url=database_url_for("postgres"), upstream_base_url=upstream.base_url, extra_env=env
    ) as server:
        yield server


# The suites' server fixtures, all this one server (the suites' tests ask for them by these names).
@pytest.fixture(scope="module")
def loom_server(s3_server: LoomServer) -> LoomServer:
    return s3_server


@pytest.fixture(scope="module")
def vs_server(s3_server: LoomServer) -> LoomServer:
    return s3_server


@pytest.fixture(scope="module")
def assistant_id(s3_server: LoomServer) -> str:
    return sdk_client(s3_server).beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}]).id


@pytest.fixture()
def client(s3_server: LoomServer) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(event_hooks={"response": [check_global_rules]})
    return sdk_client(s3_server, DEFAULT_KEY, http_client=http, timeout=120)


@pytest.fixture()
def raw(s3_server: LoomServer) -> httpx.Client:
    return raw_client(s3_server)


def test_the_server_keeps_bytes_in_object_storage(client: openai.OpenAI, s3_server: LoomServer) -> None:
    """(So that the tests above do run on S3.) An upload leaves nothing in the data directory's files."""
    client.files.create(file=("where.txt", b"in the bucket"), purpose="assistants")
    assert s3_server.env["LOOM_BLOB_URL"].startswith("s3://")
    assert [p for p in (s3_server.data_dir / "files").rglob("file-*")] == []


def test_a_large_upload_in_parts_is_multipart_in_the_store(client: openai.OpenAI) -> None:
    """Parts over S3's 5 MiB minimum, joined into a file larger than one part of the store's own multipart
    put: the bytes come back whole and in the order the parts were named."""
    parts = [secrets.token_bytes(6 * 1024 * 1024), secrets.token_bytes(5 * 1024 * 1024 + 17)]
    upload = client.uploads.create(
        bytes=sum(map(len, parts)), filename="large.bin", mime_type="application/octet-stream", purpose="assistants"
    )
    made = [client.uploads.parts.create(upload.id, data=io.BytesIO(p)) for p in parts]
    done = client.uploads.complete(upload.id, part_ids=[made[1].id, made[0].id])
    assert done.file is not None and done.file.bytes == sum(map(len, parts))
    digest = hashlib.sha256()
    with client.files.with_streaming_response.content(done.file.id) as response:
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(parts[1] + parts[0]).hexdigest()
