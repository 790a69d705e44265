"""Two replicas on one PostgreSQL deliver each event once: both delivery workers poll the same outbox, and
a delivery in flight on one (the receiver takes half a second to answer) is never taken by the other."""

from __future__ import annotations

import json
from collections import Counter

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.runs.conftest import server_env
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.support.wait import wait_for
from tests.webhooks.conftest import WEBHOOK_ENV, api_client, register, unique_path, unwrap
from tests.webhooks.receiver import Receiver

RUNS = 12


def test_two_replicas_deliver_each_event_once(upstream: FakeUpstream, receiver: Receiver) -> None:
    url = new_database()
    env = server_env(upstream, **WEBHOOK_ENV)
    path = unique_path()
    receiver.script(path, *["slow"] * (RUNS * 2))
    with (
        LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env) as a,
        LoomServer(database_url=url, upstream_base_url=upstream.base_url, extra_env=env) as b,
    ):
        with api_client(a) as api:
            endpoint = register(api, receiver.url(path), "thread.run.completed")
        clients = [sdk_client(a), sdk_client(b)]
        assistant = clients[0].beta.assistants.create(model="gpt-4o")
        run_ids = []
        for n in range(RUNS):  # alternately on each replica: each one's worker is woken by its own commits
            client = clients[n % 2]
            thread = client.beta.threads.create(messages=[{"role": "user", "content": f"hi {n}"}])
            upstream.push(Turn.reply("Hello."))
            run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
            assert run.status == "completed"
            run_ids.append(run.id)
        got = receiver.wait(path, RUNS, timeout=60)

        def settled() -> bool:
            with api_client(b) as api:
                listed = api.get(f"/loom/webhooks/{endpoint['id']}/deliveries", params={"limit": 100}).json()
            return len(listed["data"]) == RUNS and all(d["status"] == "delivered" for d in listed["data"])

        wait_for(settled, what="every delivery marked delivered")
        got = receiver.at(path)  # everything sent, now that both workers have nothing left to do
        ids = Counter(r.headers["webhook-id"] for r in got)
        assert len(ids) == RUNS and set(ids.values()) == {1}, ids
        delivered = {unwrap(clients[0], r.body, r.headers, endpoint["signing_secret"]).data.id for r in got}
        assert delivered == set(run_ids)
        assert {json.loads(r.body)["type"] for r in got} == {"thread.run.completed"}
