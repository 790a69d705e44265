"""Webhook fixtures: a loopback receiver, and Loom servers (SQLite and PostgreSQL) allowed to call it,
with quick retries and a short attempt timeout."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_KEY, sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.runs.conftest import server_env
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer
from tests.webhooks.receiver import Receiver

WEBHOOK_ENV = {
    "LOOM_WEBHOOKS_ALLOW_PRIVATE": "true",
    "LOOM_WEBHOOKS_TIMEOUT_S": "1",
    "LOOM_WEBHOOKS_RETRY_BASE_S": "0.3",
    "LOOM_WEBHOOKS_POLL_S": "0.2",
    "LOOM_WEBHOOKS_CONCURRENCY": "4",
}


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="session")
def hook_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    env = server_env(upstream, LOOM_RUN_EXPIRY_S="4", **WEBHOOK_ENV)
    with LoomServer(
        database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env
    ) as server:
        yield server


@pytest.fixture()
def client(hook_server: LoomServer) -> openai.OpenAI:
    return sdk_client(hook_server)


@pytest.fixture()
def api(hook_server: LoomServer) -> Iterator[httpx.Client]:
    with api_client(hook_server) as http:
        yield http


def api_client(server: LoomServer, key: str = DEFAULT_KEY) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30)


def unwrap(client: openai.OpenAI, body: bytes, headers: dict[str, str], secret: str) -> Any:
    """The SDK's `client.webhooks.unwrap` (its union of OpenAI's own event types does not name Loom's)."""
    return client.webhooks.unwrap(body, headers, secret=secret)


def unique_path() -> str:
    """A receiver path of the test's own (the receiver is shared by the session)."""
    return f"/hook/{secrets.token_hex(6)}"


def register(api: httpx.Client, url: str, *event_types: str, **extra: Any) -> dict[str, Any]:
    response = api.post("/loom/webhooks", json={"url": url, "event_types": list(event_types), **extra})
    assert response.status_code == 200, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint
