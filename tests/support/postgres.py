"""A real PostgreSQL 16 with pgvector for the tests, from the `pgserver` package (no system service).

One server per test session, shared by every test that needs PostgreSQL; each caller gets a fresh
database of its own so tests never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

_lock = threading.Lock()
_server: Any = None


def _ensure_runtime_dir() -> None:
    """pgserver keeps its lock file in platformdirs' user runtime directory. Without XDG_RUNTIME_DIR (a
    container, a CI job) platformdirs falls back to <tmp>/runtime-<uid> with a RuntimeDirWarning (an error
    in the tests): name that same directory, so the lock stays shared with other sessions on this machine."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"runtime-{os.geteuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def pg_server() -> Any:
    """The session's PostgreSQL server (pgserver), started on first use."""
    global _server
    with _lock:
        if _server is None:
            _ensure_runtime_dir()
            from pgserver import get_server  # type: ignore[attr-defined]  # untyped re-export

            root = Path(os.environ.get("LOOM_TEST_PGDATA", Path(tempfile.gettempdir()) / "loom-test-pg"))
            _server = get_server(root, cleanup_mode="stop")
        return _server


def _socket_dir(uri: str) -> str:
    query = parse_qs(urlparse(uri).query)
    return query["host"][0]


def url_for_database(name: str) -> str:
    """The SQLAlchemy asyncpg URL of database `name` on `pg_server()`."""
    return f"postgresql+asyncpg://postgres@/{name}?host={_socket_dir(pg_server().get_uri())}"


# Databases made by this test session, dropped when it ends (tests/conftest.py).
CREATED_DATABASES: list[str] = []


def drop_created_databases() -> None:
    if _server is None:
        return
    while CREATED_DATABASES:
        _server.psql(f"DROP DATABASE IF EXISTS {CREATED_DATABASES.pop()} WITH (FORCE);")


def new_database(prefix: str = "loom") -> str:
    """Create an empty database with pgvector enabled; return its SQLAlchemy asyncpg URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    pg_server().psql(f"CREATE DATABASE {name};")
    CREATED_DATABASES.append(name)
    return url_for_database(name)


def database_url_for(backend: str) -> str:
    """`LOOM_DATABASE_URL` for a test server: a fresh PostgreSQL database, or "" (SQLite in its data dir)."""
    return new_database() if backend == "postgres" else ""
