"""The access log and HTTP metrics (pure ASGI: streams pass through unbuffered). `GET /metrics` itself is
`loom.api.routes.metrics`."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loom.ops import metrics

access = logging.getLogger("loom.access")


def route_template(scope: Scope) -> str:
    """The matched route's path template ("/v1/threads/{thread_id}"), "(unmatched)" when none matched."""
    if "route" not in scope:
        return "(unmatched)"
    # FastAPI ≥ 0.16x matches included routers lazily and keeps the full template here.
    effective: Any = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(effective, "path_format", None)
    if isinstance(template, str):
        return template
    # Otherwise: the request path with each path parameter's value put back as its name.
    values = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{values[p]}}}" if p in values else p for p in str(scope.get("path", "")).split("/"))


class AccessMiddleware:
    """One access-log line per request (with its request id) and the request metrics, by route template."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            template = route_template(scope)
            method = scope.get("method", "")
            key = (method, template, status)
            series = self._series.get(key)
            if series is None:  # labels() takes a lock and checks its arguments: once per route and status
                series = self._series[key] = (
                    metrics.HTTP_REQUESTS.labels(method, template, str(status)),
                    metrics.HTTP_LATENCY.labels(method, template),
                )
            series[0].inc()
            series[1].observe(elapsed)
            if self.access_log and access.isEnabledFor(logging.INFO):
                path = scope.get("path", "")
                request_id = scope.get("state", {}).get("request_id", "")
                access.info(
                    "%s %s %d %.1fms",
                    method,
                    path,
                    status,
                    elapsed * 1000,
                    extra={"fields": {"request_id": request_id, "route": template}},
                )
