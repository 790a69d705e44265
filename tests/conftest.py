"""Shared fixtures: a real Loom server per database backend, and official-SDK clients for it."""

from __future__ import annotations

import os
import secrets
import shutil
import weakref
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for, drop_created_databases
from tests.support.seaweed import SeaweedS3
from tests.support.server import CREATED_DIRS, LoomServer
from tests.support.tiers import mark_tiers

DEFAULT_KEY = "sk-test-default"
# `LOOM_TEST_BLOB=s3` runs the session's shared servers with their file bytes in object storage (a real
# SeaweedFS), e.g. `LOOM_TEST_BLOB=s3 pytest tests/contract/test_files.py tests/contract/test_uploads.py`.
TEST_BLOB = os.environ.get("LOOM_TEST_BLOB", "local")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tier markers (`postgres`, `sandbox`, `e2e`, `slow`) on what was collected."""
    mark_tiers(items)


def sdk_client(server: LoomServer, key: str = DEFAULT_KEY, **kwargs: Any) -> openai.OpenAI:
    """An official-SDK client of `server`. Its connections close when the client is dropped (a socket left
    to the garbage collector is a ResourceWarning, and warnings are errors)."""
    http = kwargs.pop("http_client", None) or openai.DefaultHttpxClient()
    client = openai.OpenAI(
        base_url=server.base_url,
        api_key=key,
        _strict_response_validation=True,
        max_retries=0,
        http_client=http,
        **kwargs,
    )
    weakref.finalize(client, http.close)
    return client


@pytest.fixture(scope="session", autouse=True)
def _clean_up_after_the_session() -> Iterator[None]:
    """Leave nothing behind: the servers' data directories and the test databases."""
    yield
    for path in CREATED_DIRS:
        shutil.rmtree(path, ignore_errors=True)
    drop_created_databases()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    """A real S3-compatible server (SeaweedFS on loopback) for the session."""
    with SeaweedS3() as server:
        yield server


def s3_blob_env(server: SeaweedS3) -> dict[str, str]:
    """The environment of a Loom server whose file bytes live under a fresh prefix of `server`'s bucket."""
    return {"LOOM_BLOB_URL": server.url("loom-" + secrets.token_hex(6)), **server.env}


@pytest.fixture(scope="session")
def blob_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """What the shared servers get for their blob store: nothing (the local default), or S3 (`LOOM_TEST_BLOB`)."""
    if TEST_BLOB == "local":
        return {}
    if TEST_BLOB != "s3":
        raise pytest.UsageError(f"LOOM_TEST_BLOB is local or s3, not {TEST_BLOB!r}")
    return s3_blob_env(request.getfixturevalue("seaweed"))


@pytest.fixture(scope="session")
def loom_server(backend: str, blob_env: dict[str, str]) -> Iterator[LoomServer]:
    """One server per database backend for the whole session; tests isolate themselves by the ids they create."""
    with LoomServer(database_url=database_url_for(backend), extra_env=blob_env) as server:
        yield server


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """The scripted model, shared by the session's servers that run models."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    """Every test that uses the fake scripts it from scratch."""
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture(scope="session")
def other_key(loom_server: LoomServer) -> str:
    """A key of a second project, created with `loom keys create` while the server runs."""
    return loom_server.new_project_key()


@pytest.fixture()
def client(loom_server: LoomServer) -> openai.OpenAI:
    return sdk_client(loom_server)


@pytest.fixture()
def other_client(loom_server: LoomServer, other_key: str) -> openai.OpenAI:
    return sdk_client(loom_server, other_key)
