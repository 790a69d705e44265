"""The replicas' internal channel: `/internal/sandbox/*`, code run in the session this replica owns (and
the session closed when its thread was deleted through another replica).

Never reachable with a project API key: only the replicas' shared secret (header `x-loom-internal-secret`)
opens it. Without the header the routes do not exist (404, as any unknown URL); a wrong secret is 401.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from loom.errors import AuthenticationError, LoomError, ServiceUnavailable
from loom.scaleout.affinity import DRAINING, SECRET_HEADER, SessionAffinity
from loom.web.deps import container_of
from loom.web.http import JSON

router = APIRouter()


class _NotOwner(LoomError):
    status = 409
    type = "invalid_request_error"


async def _open(request: Request) -> tuple[SessionAffinity, dict[str, Any]]:
    affinity = container_of(request).affinity
    given = request.headers.get(SECRET_HEADER)
    if given is None:
        raise _NoRoute(f"Invalid URL ({request.method} {request.url.path})")
    if not await affinity.check_secret(given):
        raise AuthenticationError("Incorrect internal secret.", code="invalid_internal_secret")
    if affinity.draining:
        raise ServiceUnavailable("This server is shutting down.", code=DRAINING)
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("thread_id"), str):
        raise _NoRoute("Invalid internal request.")
    if not await affinity.owned_here(body["thread_id"]):
        raise _NotOwner("This replica does not own the thread's sandbox session.", code="not_owner")
    return affinity, body


class _NoRoute(LoomError):
    status = 404
    type = "invalid_request_error"


@router.post("/internal/sandbox/execute")
async def execute(request: Request) -> JSON:
    affinity, body = await _open(request)
    result = await affinity.local.execute(
        str(body["project"]),
        body["thread_id"],
        str(body["code"]),
        [str(x) for x in body["file_ids"]],
        str(body["call_id"]),
        timeout_s=float(body["timeout_s"]) if body.get("timeout_s") is not None else None,
    )
    return JSON(result.to_json())


@router.post("/internal/sandbox/export")
async def export(request: Request) -> JSON:
    affinity, body = await _open(request)
    made = await affinity.local.export(
        str(body["project"]), body["thread_id"], [str(x) for x in body["links"]], int(body["max_bytes"])
    )
    return JSON({"files": [list(pair) for pair in made]})


@router.post("/internal/sandbox/close")
async def close(request: Request) -> JSON:
    """The thread was deleted (through another replica): its session here ends now."""
    _affinity, body = await _open(request)
    await container_of(request).sandbox.close_session(body["thread_id"])
    return JSON({"closed": True})
