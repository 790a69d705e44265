"""`/v1/loom/webhooks`: CRUD with OpenAI's error shapes, project isolation, SSRF refusals, and the CLI."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, Turn
from tests.support.server import LoomServer
from tests.webhooks.conftest import api_client, register, unique_path
from tests.webhooks.receiver import Receiver


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error: dict[str, object] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


def test_crud(api: httpx.Client, receiver: Receiver) -> None:
    created = register(api, receiver.url(unique_path()), "thread.run.completed", name="first")
    assert created["object"] == "webhook_endpoint" and created["id"].startswith("we_") and created["enabled"] is True
    assert created["signing_secret"].startswith("whsec_")
    shown = api.get(f"/loom/webhooks/{created['id']}").json()
    assert shown == {k: v for k, v in created.items() if k != "signing_secret"}
    updated = api.post(
        f"/loom/webhooks/{created['id']}", json={"enabled": False, "event_types": ["thread.run.failed"]}
    ).json()
    assert (
        updated["enabled"] is False and updated["event_types"] == ["thread.run.failed"] and updated["name"] == "first"
    )
    listed = api.get("/loom/webhooks", params={"limit": 100}).json()
    assert listed["object"] == "list" and created["id"] in [e["id"] for e in listed["data"]]
    assert api.get(f"/loom/webhooks/{created['id']}/deliveries").json()["data"] == []
    deleted = api.delete(f"/loom/webhooks/{created['id']}").json()
    assert deleted == {"id": created["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    error = _error(api.get(f"/loom/webhooks/{created['id']}"), 404)
    assert error["message"] == f"No webhook endpoint found with id '{created['id']}'."


def test_bad_requests_answer_openais_errors(api: httpx.Client, receiver: Receiver) -> None:
    url = receiver.url(unique_path())
    error = _error(api.post("/loom/webhooks", json={"event_types": ["thread.run.completed"]}), 400)
    assert error["code"] == "missing_required_parameter" and error["param"] == "url"
    error = _error(api.post("/loom/webhooks", json={"url": url, "event_types": ["response.completed"]}), 400)
    assert error["code"] == "invalid_value" and error["param"] == "event_types[0]"
    error = _error(api.post("/loom/webhooks", json={"url": url, "event_types": []}), 400)
    assert error["param"] == "event_types"
    error = _error(api.post("/loom/webhooks", json={"url": url, "event_types": ["thread.run.failed"], "x": 1}), 400)
    assert error["message"] == "Unrecognized request argument supplied: x"
    error = _error(
        api.post("/loom/webhooks", json={"url": "ftp://example.com/", "event_types": ["thread.run.failed"]}), 400
    )
    assert error["param"] == "url" and "http" in str(error["message"])
    _error(api.post("/loom/webhooks/we_nope", json={"enabled": True}), 404)
    _error(api.delete("/loom/webhooks/we_nope"), 404)
    _error(api.post("/loom/webhooks/we_nope/rotate_secret"), 404)
    _error(api.get("/loom/webhooks/we_nope/deliveries"), 404)
    assert api.get("/loom/webhooks", headers={"authorization": "Bearer wrong"}).status_code == 401


def test_another_project_sees_nothing(
    hook_server: LoomServer, api: httpx.Client, client: openai.OpenAI, receiver: Receiver, upstream: FakeUpstream
) -> None:
    mine_path, theirs_path = unique_path(), unique_path()
    mine = register(api, receiver.url(mine_path), "thread.run.completed")
    other_key = hook_server.new_project_key(f"p{unique_path()[-6:]}")
    with api_client(hook_server, other_key) as other:
        for response in (
            other.get(f"/loom/webhooks/{mine['id']}"),
            other.post(f"/loom/webhooks/{mine['id']}", json={"enabled": False}),
            other.post(f"/loom/webhooks/{mine['id']}/rotate_secret"),
            other.get(f"/loom/webhooks/{mine['id']}/deliveries"),
            other.delete(f"/loom/webhooks/{mine['id']}"),
        ):
            _error(response, 404)
        assert other.get("/loom/webhooks").json()["data"] == []
        register(other, receiver.url(theirs_path), "thread.run.completed")
    # My run is delivered to my endpoint only.
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    upstream.push(Turn.reply("Hello."))
    client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    receiver.wait(mine_path, 1)
    assert receiver.at(theirs_path) == []
    assert api.get(f"/loom/webhooks/{mine['id']}").json()["enabled"] is True


@pytest.fixture(scope="module")
def strict_server() -> Iterator[LoomServer]:
    """A server with the default: private addresses refused."""
    with LoomServer() as server:
        yield server


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_addresses_are_refused_with_a_clear_400(strict_server: LoomServer, url: str) -> None:
    with api_client(strict_server) as api:
        error = _error(api.post("/loom/webhooks", json={"url": url, "event_types": ["thread.run.failed"]}), 400)
        assert error["param"] == "url" and error["code"] == "invalid_url"
        assert "LOOM_WEBHOOKS_ALLOW_PRIVATE" in str(error["message"])
        public = register(api, "http://93.184.215.14/hook", "thread.run.failed")  # a literal public address
        _error(api.post(f"/loom/webhooks/{public['id']}", json={"url": url}), 400)
        api.delete(f"/loom/webhooks/{public['id']}")


def test_the_cli(strict_server: LoomServer) -> None:
    made = strict_server.cli(
        "webhooks", "--project", "clip", "create", "--url", "http://93.184.215.14/h", "--event", "thread.run.completed"
    )
    assert made.returncode == 0, made.stderr
    assert '"signing_secret": "whsec_' in made.stdout
    listed = strict_server.cli("webhooks", "--project", "clip", "list")
    assert listed.returncode == 0 and '"url": "http://93.184.215.14/h"' in listed.stdout
    refused = strict_server.cli(
        "webhooks", "--project", "clip", "create", "--url", "http://127.0.0.1/h", "--event", "thread.run.completed"
    )
    assert refused.returncode == 1 and "LOOM_WEBHOOKS_ALLOW_PRIVATE" in refused.stderr
    missing = strict_server.cli("webhooks", "--project", "clip", "get", "we_nope")
    assert missing.returncode == 1 and "No webhook endpoint found" in missing.stderr
