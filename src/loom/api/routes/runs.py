"""Runs and run steps routes; `stream: true` answers with server-sent events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from loom.api.auth import Project, require_beta
from loom.api.http import JSON, json_body
from loom.api.sse import event_stream
from loom.schemas.common import parse
from loom.schemas.runs import RunCreate, RunModify, SubmitToolOutputs, ThreadAndRunCreate
from loom.services.common import list_params
from loom.services.runs import check_include

router = APIRouter(dependencies=[Depends(require_beta)])


def _include(request: Request) -> list[str]:
    return check_include(request.query_params.getlist("include[]") + request.query_params.getlist("include"))


def _poll_headers(request: Request, run: dict[str, Any]) -> dict[str, str]:
    return {"openai-poll-after-ms": str(request.app.state.container.engine.poll_after_ms(run))}


@router.post("/threads/{thread_id}/runs")
async def create_run(request: Request, project: Project, thread_id: str) -> Response:
    include = _include(request)
    req = parse(RunCreate, await json_body(request))
    container = request.app.state.container
    run, queue = await container.runs.create(project, thread_id, req, include)
    if queue is None:
        return JSON(run)
    first = [("thread.run.created", run), ("thread.run.queued", run)]
    return event_stream(first, queue, run["id"], container.engine.bus, container.settings.sse_keepalive_s)


@router.post("/threads/runs")
async def create_thread_and_run(request: Request, project: Project) -> Response:
    req = parse(ThreadAndRunCreate, await json_body(request))
    container = request.app.state.container
    thread, run, queue = await container.runs.create_thread_and_run(project, req)
    if queue is None:
        return JSON(run)
    first = [("thread.created", thread), ("thread.run.created", run), ("thread.run.queued", run)]
    return event_stream(first, queue, run["id"], container.engine.bus, container.settings.sse_keepalive_s)


@router.get("/threads/{thread_id}/runs")
async def list_runs(request: Request, project: Project, thread_id: str) -> JSON:
    page = await request.app.state.container.runs.list_runs(project, thread_id, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get_run(request: Request, project: Project, thread_id: str, run_id: str) -> JSON:
    service = request.app.state.container.runs
    # The SDK's poll helpers (create_and_poll, poll, …) say who they are; they get a long poll.
    if request.headers.get("x-stainless-poll-helper") == "true":
        run = await service.poll(project, thread_id, run_id)
    else:
        run = await service.get(project, thread_id, run_id)
    return JSON(run, headers=_poll_headers(request, run))


@router.post("/threads/{thread_id}/runs/{run_id}")
async def modify_run(request: Request, project: Project, thread_id: str, run_id: str) -> JSON:
    req = parse(RunModify, await json_body(request, optional=True))
    return JSON(await request.app.state.container.runs.modify(project, thread_id, run_id, req))


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(request: Request, project: Project, thread_id: str, run_id: str) -> JSON:
    return JSON(await request.app.state.container.runs.cancel(project, thread_id, run_id))


@router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs")
async def submit_tool_outputs(request: Request, project: Project, thread_id: str, run_id: str) -> Response:
    req = parse(SubmitToolOutputs, await json_body(request))
    container = request.app.state.container
    step, run, queue = await container.runs.submit_tool_outputs(project, thread_id, run_id, req)
    if queue is None:
        return JSON(run)
    first = [("thread.run.step.completed", step), ("thread.run.queued", run)]
    return event_stream(first, queue, run_id, container.engine.bus, container.settings.sse_keepalive_s)


@router.get("/threads/{thread_id}/runs/{run_id}/steps")
async def list_steps(request: Request, project: Project, thread_id: str, run_id: str) -> JSON:
    page = await request.app.state.container.runs.list_steps(
        project, thread_id, run_id, list_params(request.query_params), _include(request)
    )
    return JSON(page.wire())


@router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}")
async def get_step(request: Request, project: Project, thread_id: str, run_id: str, step_id: str) -> JSON:
    return JSON(await request.app.state.container.runs.get_step(project, thread_id, run_id, step_id, _include(request)))
