"""A run queued again by its tool outputs is leased to the replica that took them, in the same commit:
if that process dies before its executor claims the run, the lease lapses and a sweep fails the run,
instead of leaving it `queued` (with no lease, no sweep looked at it) until its deadline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from loom.api.app import create_app
from loom.container import Container
from loom.store import tables
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.inprocess.conftest import KEY, inprocess_settings
from tests.runs.conftest import FUNCTION_TOOL
from tests.support.wait import wait_for_async


async def _status(api: httpx.AsyncClient, thread_id: str, run_id: str, wanted: str) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        run: dict[str, Any] = (await api.get(f"/threads/{thread_id}/runs/{run_id}")).json()
        return run if run["status"] == wanted else None

    return await wait_for_async(reached, timeout=10, what=f"run {run_id} to be {wanted}", interval=0.025)


async def test_a_run_queued_by_tool_outputs_is_leased_and_failed_if_never_claimed(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    settings = inprocess_settings(tmp_path).model_copy(update={"upstream_base_url": upstream.base_url, "lease_s": 1.0})
    container = Container(settings)
    app = create_app(container)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loom/v1", headers=headers) as api:
            assistant = (await api.post("/assistants", json={"model": "gpt-4o", "tools": [FUNCTION_TOOL]})).json()
            thread = (await api.post("/threads", json={"messages": [{"role": "user", "content": "weather?"}]})).json()
            upstream.push(Turn.calls(ToolCallSpec("get_weather", {"city": "Oslo"})))
            run = (await api.post(f"/threads/{thread['id']}/runs", json={"assistant_id": assistant["id"]})).json()
            run = await _status(api, thread["id"], run["id"], "requires_action")
            call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]

            # This process "dies" between the commit that queues the run again and its executor's claim.
            container.engine.start_run = lambda *args, **kwargs: None  # type: ignore[method-assign]
            outputs = {"tool_outputs": [{"tool_call_id": call["id"], "output": "warm"}]}
            queued = await api.post(f"/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs", json=outputs)
            assert queued.status_code == 200 and queued.json()["status"] == "queued"
            t = tables.runs
            async with container.db.read() as conn:
                owner, until = (
                    await conn.execute(sa.select(t.c.lease_owner, t.c.lease_expires_at).where(t.c.id == run["id"]))
                ).one()
            assert owner == container.engine.replica and until is not None and until > time.time()

            # The lease lapses and the sweep (this replica's here; any replica's on PostgreSQL) fails the run.
            failed = await _status(api, thread["id"], run["id"], "failed")
            assert failed["last_error"]["code"] == "server_error"
            assert time.time() >= until
