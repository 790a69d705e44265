"""Loom in this process: the real app and container over a temporary SQLite, driven through httpx's ASGI
transport. No server subprocess, no sockets: the fast tier's API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from loom.api.app import create_app
from loom.config import Settings
from loom.container import Container

KEY = "sk-inprocess"


def inprocess_settings(data_dir: Path) -> Settings:
    """What tests/support/server.py gives a `loom serve` subprocess, as init arguments (they win over LOOM_*)."""
    return Settings(
        data_dir=data_dir,
        database_url="",
        api_keys=[KEY],
        upstream_base_url="http://127.0.0.1:9/v1",  # nothing listens: these tests run no model
        upstream_api_key="sk-upstream",
        upstream_dialect="openai",
        poll_after_ms=20,
        sandbox_prewarm=False,
    )


@pytest.fixture()
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a fresh in-process Loom, its lifespan (migrations, engine, workers) running."""
    app = create_app(Container(inprocess_settings(tmp_path)))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
        async with httpx.AsyncClient(transport=transport, base_url="http://loom/v1", headers=headers) as client:
            yield client
