"""The start-up report: what this server is, where its data lives, and what it can reach.

Each model backend lists its models (`GET /models`, a few seconds at most, all at once); one that does not
answer is a warning, never a failure: the server starts anyway, and runs on that backend fail with a
`last_error` naming it until it answers.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING, Any

from loom import __version__
from loom.config import mask_url

if TYPE_CHECKING:
    from loom.container import Container

log = logging.getLogger("loom")
PROBE_TIMEOUT_S = 3.0
OPENAI_URL = "https://api.openai.com/v1"


async def probe_backend(backend: Any) -> str | None:
    """None when the backend answered `GET /models`, else why not (one line). The backend's own listing
    (its client, headers and query; remembered for `/v1/models` too), given a few seconds at most."""
    try:
        await asyncio.wait_for(backend.list_models(), timeout=PROBE_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:g} s at {backend.config.base_url.rstrip('/')}/models"
    problem: str | None = backend.models_problem
    return problem


def _sandbox_state(container: Container) -> tuple[int, str]:
    settings = container.settings
    env = settings.sandbox_env.absolute()
    if settings.sandbox == "unsafe-local":
        return logging.WARNING, f"code interpreter: UNSAFE-LOCAL (no isolation), environment {env}"
    if shutil.which("bwrap") is None:
        return logging.WARNING, "code interpreter: unavailable: bubblewrap (bwrap) is not installed"
    if not (env / "bin" / "python").exists():
        return logging.WARNING, f"code interpreter: unavailable: no environment at {env} (run `loom sandbox setup`)"
    when = "starting in the background" if settings.sandbox_prewarm else "starts on first use"
    return logging.INFO, f"code interpreter: bubblewrap, environment {env}, {when}"


async def _listed_models(container: Container) -> list[str]:
    """Each listed model, its backend, and its context window with where it comes from (configured,
    what the backend says it serves, known OpenAI family, default); windows not found in time are left out."""
    router = container.router
    listed = await router.list_models()
    try:
        windows: list[tuple[int, str] | None] = list(
            await asyncio.wait_for(
                asyncio.gather(*(router.context_window(m.id) for m in listed)), timeout=PROBE_TIMEOUT_S
            )
        )
    except TimeoutError:
        windows = [None] * len(listed)
    return [
        f"{m.id} -> {m.owned_by}" + (f" (context window {w[0]}: {w[1]})" if w else "")
        for m, w in zip(listed, windows, strict=True)
    ]


async def startup_report(container: Container, url: str, *, has_keys: bool) -> list[tuple[int, str]]:
    """The lines of the report, each with its log level."""
    settings = container.settings
    lines: list[tuple[int, str]] = [
        (logging.INFO, f"Loom {__version__} serving {url}"),
        (logging.INFO, f"data: {settings.data_dir.absolute()}"),
        (logging.INFO, f"database: {mask_url(settings.effective_database_url)}"),
        (logging.INFO, f"blob store: local files in {settings.files_dir.absolute()}"),
    ]
    backends = container.router.backends
    configs = {name: getattr(backend, "config", None) for name, backend in backends.items()}
    asked = [name for name, config in configs.items() if config is not None]
    probes = await asyncio.gather(*(probe_backend(backends[name]) for name in asked))
    problems = dict(zip(asked, probes, strict=True))
    for name, config in configs.items():
        if config is None:
            lines.append((logging.INFO, f"model backend {name}: not probed"))
            continue
        where = f"model backend {name} ({config.base_url})"
        if name == "default" and config.base_url.rstrip("/") == OPENAI_URL and not config.api_key:
            lines.append(
                (
                    logging.WARNING,
                    f"{where}: no API key: set LOOM_UPSTREAM_API_KEY, or point LOOM_UPSTREAM_BASE_URL at your model server",
                )
            )
        elif problems[name] is not None:
            lines.append((logging.WARNING, f"{where} did not answer GET /models: {problems[name]}"))
        else:
            lines.append((logging.INFO, f"{where}: answered"))
    routed = await _listed_models(container)
    routed += [f"{r.name} -> {r.backend}" for r in getattr(container.router, "_patterns", [])]
    default = getattr(container.router, "default_backend", "default")
    lines.append((logging.INFO, f"models: {', '.join(routed) or 'none configured'}; other names -> {default}"))
    lines.append((logging.INFO, f"embedder: {container.embedder.name} ({container.embedder.dimensions} dimensions)"))
    lines.append(_sandbox_state(container))
    if has_keys:
        lines.append((logging.INFO, "keys: API keys required"))
    else:
        lines.append((logging.WARNING, "keys: none configured: any bearer token is accepted (open mode)"))
    return lines


async def log_startup_report(container: Container, url: str, *, has_keys: bool) -> None:
    for level, line in await startup_report(container, url, has_keys=has_keys):
        log.log(level, "%s", line)
