"""Contract-test clients that also check two global rules on every response they get.

- every response, errors included, carries `x-request-id` (CONFORMANCE §1.3);
- no response is a 409: the SDK silently retries 409, so business conflicts must be 400 (§1.4).
"""

from __future__ import annotations

import httpx
import httpx2
import openai
import pytest

from tests.conftest import DEFAULT_KEY, sdk_client
from tests.support.server import LoomServer


def check_global_rules(response: httpx2.Response | httpx.Response) -> None:
    assert response.headers.get("x-request-id", "").startswith("req_"), (
        f"{response.request.method} {response.request.url} answered without x-request-id"
    )
    assert response.status_code != 409, f"{response.request.method} {response.request.url} answered 409"


def checked_client(server: LoomServer, key: str = DEFAULT_KEY) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(event_hooks={"response": [check_global_rules]})
    return sdk_client(server, key, http_client=http)


def raw_client(server: LoomServer, key: str | None = DEFAULT_KEY, beta: bool = True) -> httpx.Client:
    """Plain HTTP, for what the SDK cannot send (bad JSON, missing headers, odd multipart)."""
    headers = {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if beta:
        headers["OpenAI-Beta"] = "assistants=v2"
    return httpx.Client(
        base_url=server.base_url,
        headers=headers,
        timeout=60,
        event_hooks={"response": [check_global_rules]},
    )


@pytest.fixture()
def client(loom_server: LoomServer) -> openai.OpenAI:
    return checked_client(loom_server)


@pytest.fixture()
def other_client(loom_server: LoomServer, other_key: str) -> openai.OpenAI:
    return checked_client(loom_server, other_key)


@pytest.fixture()
def raw(loom_server: LoomServer) -> httpx.Client:
    return raw_client(loom_server)
