"""`GET /metrics`: Prometheus text format, behind the key `LOOM_METRICS` asks for; and the gauges read from
the container's state (the sandbox's sessions) at each scrape."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from loom.container import Container
from loom.web.deps import container_of


def sandbox_gauges(container: Container) -> dict[str, float]:
    manager = container.sandbox.manager
    if manager is None:
        return {}
    return {
        "loom_sandbox_sessions_live": float(manager.live_sessions),
        "loom_sandbox_sessions_pooled": float(manager.pooled),
    }


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format. LOOM_METRICS=key: the bearer token must be metrics_key or an API key."""
    container = container_of(request)
    mode = container.settings.metrics
    if mode == "off":
        return Response(status_code=404)
    if mode == "key":
        header = request.headers.get("authorization") or ""
        key = container.settings.metrics_key
        if not (key and header == f"Bearer {key}"):
            await container.keys.authenticate(header or None)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
