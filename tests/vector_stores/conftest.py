"""Vector-store fixtures: a scripted fake upstream and one Loom server per database backend pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer

ENV = {"LOOM_POLL_AFTER_MS": "20", "LOOM_UPSTREAM_MAX_RETRIES": "0", "LOOM_VECTOR_STORE_JANITOR_S": "0.5"}


@pytest.fixture(scope="session")
def vs_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    with LoomServer(
        database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=ENV
    ) as server:
        yield server


@pytest.fixture(scope="session")
def vs_other_key(vs_server: LoomServer) -> str:
    return vs_server.new_project_key()


@pytest.fixture()
def client(vs_server: LoomServer) -> openai.OpenAI:
    return sdk_client(vs_server)


@pytest.fixture()
def other_client(vs_server: LoomServer, vs_other_key: str) -> openai.OpenAI:
    return sdk_client(vs_server, vs_other_key)


# Ingestion can take a while on a loaded machine: what the tests here give it (tests.support.wait.wait_for).
INGEST_TIMEOUT_S = 60.0


def big_text(n_paragraphs: int, marker: str = "") -> bytes:
    """A long plain-text document (distinct paragraphs, so chunks differ)."""
    lines = [
        f"Paragraph {i}: the archive of item {i * 7919 % 104729} lists shelf {i % 97}, row {i % 13}, "
        f"and notes that volume {i} was catalogued after volume {i - 1}. {marker}"
        for i in range(n_paragraphs)
    ]
    return "\n".join(lines).encode()
