"""The ASGI application: routes under /v1, errors in OpenAI's shape, request ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException

from loom.api.middleware import RequestIdMiddleware
from loom.api.routes import assistants, files, internal, models, runs, threads, vector_stores, webhooks
from loom.api.routes.metrics import metrics_endpoint, sandbox_gauges
from loom.console import api as console_api
from loom.console import pages as console_pages
from loom.container import Container
from loom.errors import LoomError
from loom.ops import metrics
from loom.ops.http import AccessMiddleware
from loom.web.http import JSON


def create_app(container: Container, before_start: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    """The app over `container`. `before_start` runs in the lifespan, on the server's event loop, before the
    container starts (`loom serve`'s start-up report: the connections it opens to the model backends stay
    usable, and closable, on that loop)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if before_start is not None:
            await before_start()
        await container.start()
        gauges = metrics.register_state(lambda: sandbox_gauges(container))
        try:
            yield
        finally:
            metrics.unregister(gauges)
            await container.stop()

    app = FastAPI(title="Loom", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.container = container

    @app.exception_handler(LoomError)
    async def loom_error(_request: Request, exc: LoomError) -> JSON:
        return JSON(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSON:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Invalid method for URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        return JSON(body, status_code=exc.status_code)

    @app.get("/health")
    async def health() -> JSON:
        return JSON({"status": "ok"})

    # runs first: its `POST /threads/runs` must win over threads' `POST /threads/{thread_id}`.
    for module in (assistants, runs, threads, files, models, vector_stores, webhooks):
        app.include_router(module.router, prefix="/v1")
    app.add_route("/metrics", metrics_endpoint, methods=["GET"])
    # The replicas' internal channel (loom.scaleout): only their shared secret opens it.
    app.include_router(internal.router)
    # The console (its API first: the pages' catch-all must not shadow it).
    app.include_router(console_api.router)
    app.include_router(console_pages.router)
    app.add_middleware(AccessMiddleware, access_log=container.settings.access_log)
    app.add_middleware(RequestIdMiddleware, replica=container.replica)
    return app
