"""Delivery: retries after a 500 with the same webhook-id, a hanging receiver neither delays runs nor
takes the server, a pending delivery survives a kill -9, what a disabled endpoint kept pending fails
once the retry window has passed, secrets rotate, and the SSRF check is made again at delivery time."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from loom.webhooks.delivery import EXPIRED
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.runs.conftest import server_env
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for
from tests.webhooks.conftest import WEBHOOK_ENV, api_client, register, unique_path, unwrap
from tests.webhooks.receiver import Receiver


def _complete_a_run(client: openai.OpenAI, upstream: FakeUpstream) -> str:
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    upstream.push(Turn.reply("Hello."))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    return run.id


def test_a_500_is_retried_with_the_same_id_until_a_2xx(
    client: openai.OpenAI, api: httpx.Client, receiver: Receiver, upstream: FakeUpstream
) -> None:
    path = unique_path()
    receiver.script(path, 500, 503)
    endpoint = register(api, receiver.url(path), "thread.run.completed")
    run_id = _complete_a_run(client, upstream)
    attempts = receiver.wait(path, 3)
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert len({a.body for a in attempts}) == 1
    assert attempts[1].at - attempts[0].at >= 0.1  # backed off
    event = unwrap(client, attempts[2].body, attempts[2].headers, endpoint["signing_secret"])
    assert event.data.id == run_id

    def delivered() -> Any:
        (d,) = api.get(f"/loom/webhooks/{endpoint['id']}/deliveries").json()["data"]
        return d if d["status"] == "delivered" else None

    d = wait_for(delivered, what="the delivery to be marked delivered")
    assert d["attempts"] == 3 and d["last_status_code"] == 200 and d["event_type"] == "thread.run.completed"


def test_a_hanging_receiver_delays_no_run_and_does_not_take_the_server(
    client: openai.OpenAI, api: httpx.Client, receiver: Receiver, upstream: FakeUpstream
) -> None:
    path = unique_path()
    receiver.script(path, *["hang"] * 50)
    register(api, receiver.url(path), "thread.run.completed")
    started = time.monotonic()
    for _ in range(8):  # twice the server's delivery slots
        _complete_a_run(client, upstream)
    elapsed = time.monotonic() - started
    receiver.wait(path, 4)
    # The runs went at their own pace (8 runs; the receiver hangs each attempt for the 1 s timeout).
    assert elapsed < 8.0, elapsed
    for _ in range(5):
        t0 = time.monotonic()
        assert api.get("/loom/webhooks").status_code == 200
        assert time.monotonic() - t0 < 1.0


def test_a_pending_delivery_survives_a_kill_and_is_sent_after_restart(
    backend: str, upstream: FakeUpstream, receiver: Receiver
) -> None:
    url = new_database() if backend == "postgres" else ""
    env = server_env(upstream, **{**WEBHOOK_ENV, "LOOM_WEBHOOKS_RETRY_BASE_S": "3"})
    first = LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env).start()
    path = unique_path()
    receiver.script(path, 500)
    try:
        with api_client(first) as api:
            endpoint = register(api, receiver.url(path), "thread.run.completed")
        run_id = _complete_a_run(sdk_client(first), upstream)
        receiver.wait(path, 1)  # the first attempt failed; the next is due in seconds
    finally:
        first.kill()
    again = LoomServer(
        database_url=url,
        upstream_base_url=upstream.base_url,
        data_dir=first.data_dir,
        extra_env={k: v for k, v in first.env.items() if k.startswith("LOOM_")},
    ).start()
    try:
        second = receiver.wait(path, 2, timeout=30)[1]
        event = unwrap(sdk_client(again), second.body, second.headers, endpoint["signing_secret"])
        assert event.type == "thread.run.completed" and event.data.id == run_id
    finally:
        again.stop()


def test_a_disabled_endpoints_pending_delivery_fails_once_the_retry_window_has_passed(
    backend: str, upstream: FakeUpstream, receiver: Receiver
) -> None:
    url = new_database() if backend == "postgres" else ""
    env = server_env(
        upstream, **{**WEBHOOK_ENV, "LOOM_WEBHOOKS_RETRY_BASE_S": "2", "LOOM_WEBHOOKS_RETRY_WINDOW_S": "5"}
    )
    with (
        LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env) as server,
        api_client(server) as api,
    ):
        path = unique_path()
        receiver.script(path, *[500] * 20)
        endpoint = register(api, receiver.url(path), "thread.run.completed")
        _complete_a_run(sdk_client(server), upstream)
        receiver.wait(path, 1)  # the first attempt failed; the next is due 1-2 s later
        assert api.post(f"/loom/webhooks/{endpoint['id']}", json={"enabled": False}).status_code == 200

        def settled() -> Any:
            (d,) = api.get(f"/loom/webhooks/{endpoint['id']}/deliveries").json()["data"]
            return d if d["status"] != "pending" else None

        d = wait_for(settled, what="the disabled endpoint's delivery to fail")
        assert d["status"] == "failed" and d["last_error"] == EXPIRED and d["attempts"] == 1
        assert len(receiver.at(path)) == 1  # nothing more was sent to the disabled endpoint


def test_rotating_the_secret(
    client: openai.OpenAI, api: httpx.Client, receiver: Receiver, upstream: FakeUpstream
) -> None:
    path = unique_path()
    endpoint = register(api, receiver.url(path), "thread.run.completed")
    old = endpoint["signing_secret"]
    rotated = api.post(f"/loom/webhooks/{endpoint['id']}/rotate_secret").json()
    new = rotated["signing_secret"]
    assert new != old and new.startswith("whsec_") and rotated["signing_secret_hint"].endswith(new[-4:])
    assert "signing_secret" not in api.get(f"/loom/webhooks/{endpoint['id']}").json()
    _complete_a_run(client, upstream)
    (got,) = receiver.wait(path, 1)
    client.webhooks.unwrap(got.body, got.headers, secret=new)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(got.body, got.headers, secret=old)
    # Keeping the old one for 24 hours: deliveries carry both signatures.
    newer = api.post(
        f"/loom/webhooks/{endpoint['id']}/rotate_secret", json={"keep_old_secret_active_for_24_hours": True}
    ).json()["signing_secret"]
    _complete_a_run(client, upstream)
    got = receiver.wait(path, 2)[1]
    assert len(got.headers["webhook-signature"].split()) == 2
    client.webhooks.unwrap(got.body, got.headers, secret=newer)
    client.webhooks.unwrap(got.body, got.headers, secret=new)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(got.body, got.headers, secret=old)


def test_the_address_is_checked_again_at_delivery(upstream: FakeUpstream, receiver: Receiver) -> None:
    """Registered while private addresses were allowed; the operator then forbids them: nothing is sent."""
    env = server_env(upstream, **WEBHOOK_ENV)
    first = LoomServer(upstream_base_url=upstream.base_url, extra_env=env).start()
    path = unique_path()
    try:
        with api_client(first) as api:
            endpoint = register(api, receiver.url(path), "thread.run.completed")
    finally:
        first.stop()
    strict = {**{k: v for k, v in first.env.items() if k.startswith("LOOM_")}, "LOOM_WEBHOOKS_ALLOW_PRIVATE": "false"}
    again = LoomServer(upstream_base_url=upstream.base_url, data_dir=first.data_dir, extra_env=strict).start()
    try:
        _complete_a_run(sdk_client(again), upstream)
        with api_client(again) as api:

            def refused() -> Any:
                data = api.get(f"/loom/webhooks/{endpoint['id']}/deliveries").json()["data"]
                return data if data and data[0]["attempts"] >= 1 else None

            (d,) = wait_for(refused, what="an attempt")
        assert d["status"] == "pending" and "127.0.0.1" in d["last_error"] and "refused" in d["last_error"]
        assert receiver.at(path) == []
    finally:
        again.stop()
    assert d["last_status_code"] is None
