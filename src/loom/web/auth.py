"""Authentication (bearer key → project) and the `OpenAI-Beta` header rule."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from loom.errors import InvalidRequest
from loom.web.deps import container_of


async def authenticate(request: Request) -> str:
    return await container_of(request).keys.authenticate(request.headers.get("authorization"))


Project = Annotated[str, Depends(authenticate)]


async def require_beta(request: Request) -> None:
    """Assistants and threads need `OpenAI-Beta: assistants=v2` (CONFORMANCE §1.2).

    A request with neither a key nor the header gets the 401 first: on a bad header the key is checked
    here before the beta error is raised. The good path depends on nothing, so FastAPI solves one
    dependency fewer per request than if this depended on `authenticate` (each dependency costs a
    solve of its own, cached or not: about 600 bytecodes, `bench/api_bench.py`)."""
    beta = request.headers.get("openai-beta", "")
    values = {v.strip() for v in beta.split(",")}
    if "assistants=v2" in values:
        return
    await authenticate(request)
    if "assistants=v1" in values:
        raise InvalidRequest(
            "The v1 Assistants API has been deprecated. Please try again by setting the header "
            "'OpenAI-Beta: assistants=v2'.",
            code="invalid_beta",
        )
    raise InvalidRequest(
        "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try again by setting "
        "the header 'OpenAI-Beta: assistants=v2'.",
        code="invalid_beta",
    )


async def optional_beta(request: Request) -> None:
    """Vector stores accept the header or its absence, but not the retired v1."""
    if "assistants=v1" in request.headers.get("openai-beta", ""):
        await require_beta(request)
