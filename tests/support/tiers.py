"""The test tiers: markers put on collected tests by what they need (see the README's Development section).

- `postgres`: runs against PostgreSQL (a `backend`-style parameter is "postgres", or, unparametrised, the
  test or one of its fixtures makes a database with `tests.support.postgres`);
- `sandbox`: starts code-interpreter kernels (everything under tests/code_interpreter and tests/sandbox);
- `e2e`: drives a `loom serve` subprocess (a fixture of the test returns a `LoomServer`, or the test itself
  builds one);
- `slow`: measured over ~5 s on the 2-core dev machine (`SLOW`, by node id without parameters).

`llamacpp` and `console` are set by their test modules (`pytestmark`).
The fast tier is `-m "not postgres and not sandbox and not slow and not llamacpp and not console"`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support import postgres, server

TESTS = Path(__file__).resolve().parents[1]
SANDBOX_DIRS = ("code_interpreter", "sandbox")

# Tests that took over ~5 s in `--durations` runs of their directories (SQLite; their PostgreSQL variants
# too). A name here that no longer exists fails the collection of its file (see `mark_tiers`).
SLOW: frozenset[str] = frozenset(
    {
        # Measured with --durations on the 2-core machine (quiet): 5 to 14 s each on SQLite.
        "tests/code_interpreter/test_no_private_keys.py::test_no_wire_object_carries_private_keys",
        "tests/contract/test_keys_cli.py::test_create_list_revoke",
        "tests/contract/test_keys_cli.py::test_open_mode_then_first_key_closes_it",
        "tests/contract/test_upload_crash.py::test_a_live_completion_is_not_rolled_back",
        "tests/contract/test_upload_crash.py::test_an_upload_stuck_completing_expires_with_its_parts",
        "tests/ops/test_archive.py::test_export_then_import_into_a_fresh_server",
        "tests/ops/test_install.py::test_wheel_installs_and_serves_from_anywhere",
        "tests/runs/test_run_deadline.py::test_a_resumed_run_gets_the_whole_duration_again",
        "tests/vector_stores/test_ingest_bombs.py::test_parser_out_of_memory_fails_the_file_not_the_server",
        "tests/vector_stores/test_restart_and_compat.py::test_kill_during_ingestion_then_restart",
        # Two servers, one of them loading all-MiniLM-L6-v2 (graph built and quantised at load).
        "tests/vector_stores/test_store_embedder.py::test_store_keeps_its_embedder_after_the_default_changes",
    }
)

# What a test or fixture calls to get a PostgreSQL database of its own.
_PG_NAMES = frozenset({postgres.new_database.__name__, postgres.pg_server.__name__})


def _code_names(func: Callable[..., Any]) -> set[str]:
    code = getattr(inspect.unwrap(func), "__code__", None)
    return set(code.co_names) if code is not None else set()


def _returns_server(func: Callable[..., Any]) -> bool:
    try:
        annotation = inspect.signature(func).return_annotation
    except (TypeError, ValueError):
        return False
    return server.LoomServer.__name__ in str(annotation)


def _fixture_funcs(item: pytest.Item) -> Iterable[Callable[..., Any]]:
    info: Any = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for defs in info.name2fixturedefs.values():
        for fixturedef in defs:
            yield fixturedef.func


def _server_builders(item: pytest.Function) -> set[str]:
    """Names in the test's module that start a `loom serve`: the class and helpers returning one."""
    names = {server.LoomServer.__name__}
    for name, value in vars(item.module).items():
        if inspect.isfunction(value) and _returns_server(value):
            names.add(name)
    return names


def _is_postgres(item: pytest.Function, fixtures: list[Callable[..., Any]]) -> bool:
    params = getattr(item, "callspec", None)
    values = [v for v in params.params.values() if isinstance(v, str)] if params is not None else []
    if "postgres" in values:
        return True
    if "sqlite" in values:  # parametrised by backend, and this is the SQLite one
        return False
    return any(_code_names(f) & _PG_NAMES for f in [item.function, *fixtures])


def _is_e2e(item: pytest.Function, fixtures: list[Callable[..., Any]]) -> bool:
    if any(_returns_server(f) for f in fixtures):
        return True
    return bool(_code_names(item.function) & _server_builders(item))


def _base_id(item: pytest.Item) -> str:
    return item.nodeid.split("[", 1)[0]


def _exists(name: str, modules: dict[str, Any]) -> bool:
    """Whether `SLOW` entry `file::test` (or `file::Class::test`) names a function of a collected module."""
    file, *path = name.split("::")
    obj = modules.get(file)
    if obj is None:
        return True  # its file was not collected: nothing to say
    for part in path:
        obj = getattr(obj, part, None)
    return obj is not None


def mark_tiers(items: list[pytest.Item]) -> None:
    modules: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        fixtures = list(_fixture_funcs(item))
        relative = item.path.resolve().relative_to(TESTS).parts
        if relative and relative[0] in SANDBOX_DIRS:
            item.add_marker(pytest.mark.sandbox)
        if _is_postgres(item, fixtures):
            item.add_marker(pytest.mark.postgres)
        if _is_e2e(item, fixtures):
            item.add_marker(pytest.mark.e2e)
        base = _base_id(item)
        modules[base.split("::", 1)[0]] = item.module
        if base in SLOW:
            item.add_marker(pytest.mark.slow)
    stale = sorted(name for name in SLOW if not _exists(name, modules))
    if stale:
        raise pytest.UsageError(f"tests/support/tiers.py SLOW names tests that do not exist: {stale}")
