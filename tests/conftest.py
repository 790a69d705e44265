"""Shared fixtures: a real Loom server per database backend, and official-SDK clients for it."""

from __future__ import annotations

import shutil
import weakref
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for, drop_created_databases
from tests.support.server import CREATED_DIRS, LoomServer
from tests.support.tiers import mark_tiers

DEFAULT_KEY = "sk-test-default"


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
def loom_server(backend: str) -> Iterator[LoomServer]:
    """One server per database backend for the whole session; tests isolate themselves by the ids they create."""
    with LoomServer(database_url=database_url_for(backend)) as server:
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
