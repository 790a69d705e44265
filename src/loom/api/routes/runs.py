"""Runs and run steps routes; `stream: true` answers with server-sent events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from loom.schemas.common import parse
from loom.schemas.runs import RunCreate, RunModify, SubmitToolOutputs, ThreadAndRunCreate
from loom.services.common import list_params
from loom.services.runs import RunService, check_include
from loom.web.auth import Project, require_beta
from loom.web.deps import RunServiceDep
from loom.web.http import JSON, json_body
from loom.web.sse import event_stream

router = APIRouter(dependencies=[Depends(require_beta)])


def _include(request: Request) -> list[str]:
    return check_include(request.query_params.getlist("include[]") + request.query_params.getlist("include"))


def _polled(runs: RunService, run: dict[str, Any]) -> JSON:
    return JSON(run, headers={"openai-poll-after-ms": str(runs.poll_after_ms(run))})


@router.post("/threads/{thread_id}/runs")
async def create_run(request: Request, project: Project, runs: RunServiceDep, thread_id: str) -> Response:
    include = _include(request)
    req = parse(RunCreate, await json_body(request))
    run, events = await runs.create(project, thread_id, req, include)
    return JSON(run) if events is None else event_stream(events)


@router.post("/threads/runs")
async def create_thread_and_run(request: Request, project: Project, runs: RunServiceDep) -> Response:
    req = parse(ThreadAndRunCreate, await json_body(request))
    _thread, run, events = await runs.create_thread_and_run(project, req)
    return JSON(run) if events is None else event_stream(events)


@router.get("/threads/{thread_id}/runs")
async def list_runs(request: Request, project: Project, runs: RunServiceDep, thread_id: str) -> JSON:
    page = await runs.list_runs(project, thread_id, list_params(request.query_params))
    return JSON(page.wire())


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get_run(request: Request, project: Project, runs: RunServiceDep, thread_id: str, run_id: str) -> JSON:
    # The SDK's poll helpers (create_and_poll, poll, …) say who they are; they get a long poll.
    if request.headers.get("x-stainless-poll-helper") == "true":
        run = await runs.poll(project, thread_id, run_id)
    else:
        run = await runs.get(project, thread_id, run_id)
    return _polled(runs, run)


@router.post("/threads/{thread_id}/runs/{run_id}")
async def modify_run(request: Request, project: Project, runs: RunServiceDep, thread_id: str, run_id: str) -> JSON:
    req = parse(RunModify, await json_body(request, optional=True))
    return JSON(await runs.modify(project, thread_id, run_id, req))


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(project: Project, runs: RunServiceDep, thread_id: str, run_id: str) -> JSON:
    return JSON(await runs.cancel(project, thread_id, run_id))


@router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs")
async def submit_tool_outputs(
    request: Request, project: Project, runs: RunServiceDep, thread_id: str, run_id: str
) -> Response:
    req = parse(SubmitToolOutputs, await json_body(request))
    _step, run, events = await runs.submit_tool_outputs(project, thread_id, run_id, req)
    return JSON(run) if events is None else event_stream(events)


@router.get("/threads/{thread_id}/runs/{run_id}/steps")
async def list_steps(request: Request, project: Project, runs: RunServiceDep, thread_id: str, run_id: str) -> JSON:
    page = await runs.list_steps(project, thread_id, run_id, list_params(request.query_params), _include(request))
    return JSON(page.wire())


@router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}")
async def get_step(
    request: Request, project: Project, runs: RunServiceDep, thread_id: str, run_id: str, step_id: str
) -> JSON:
    return JSON(await runs.get_step(project, thread_id, run_id, step_id, _include(request)))
