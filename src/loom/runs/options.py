"""Loom's opt-in run options, read from metadata (beyond OpenAI's limits; nothing changes unless asked).

- `loom_concurrent_runs: "true"` in a thread's metadata (or the server-wide `LOOM_CONCURRENT_RUNS`): the
  thread may hold several active runs, and take new messages while they run.
- `loom_max_run_seconds` and `loom_max_execution_seconds` in an assistant's or a run's metadata (the
  run's win): how long the run may execute before it ends `expired` (its `expires_at`), and how long one
  code-interpreter execution may take. Absent, the server's `LOOM_RUN_MAX_DURATION_S` and
  `LOOM_SANDBOX_TIMEOUT_S` apply, as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from loom.config import Settings
from loom.errors import InvalidRequest

CONCURRENT_RUNS = "loom_concurrent_runs"
MAX_RUN_SECONDS = "loom_max_run_seconds"
MAX_EXECUTION_SECONDS = "loom_max_execution_seconds"


def concurrent_runs(server_wide: bool, thread: Mapping[str, Any]) -> bool:
    """Whether `thread` (its wire object) may hold several active runs (`server_wide`: the setting)."""
    return server_wide or (thread.get("metadata") or {}).get(CONCURRENT_RUNS) == "true"


def _bounds(settings: Settings) -> dict[str, float]:
    return {MAX_RUN_SECONDS: settings.run_max_duration_limit_s, MAX_EXECUTION_SECONDS: settings.sandbox_max_timeout_s}


def check_limits(settings: Settings, metadata: Mapping[str, str] | None) -> None:
    """Refuse limits in `metadata` that are not a number of seconds within the server's bounds (400)."""
    for key, ceiling in _bounds(settings).items():
        raw = (metadata or {}).get(key)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= ceiling):
            raise InvalidRequest(
                f"Invalid 'metadata.{key}': expected a number of seconds greater than 0 and at most "
                f"{ceiling:g}, but got '{raw}' instead.",
                param=f"metadata.{key}",
                code="invalid_value",
            )


def _limit(key: str, run: Mapping[str, Any], assistant: Mapping[str, Any] | None) -> float | None:
    """The run's own value of `key`, else its assistant's (both checked when they were stored)."""
    for owner in (run, assistant or {}):
        raw = (owner.get("metadata") or {}).get(key)
        if raw is not None:
            try:
                return float(raw)
            except ValueError:
                continue
    return None


def run_limit_s(run: Mapping[str, Any], assistant: Mapping[str, Any] | None) -> int | None:
    """How long the run may execute from its creation (or resumption), in whole seconds, when its
    metadata or its assistant's says (None: the server's `run_max_duration_s`)."""
    value = _limit(MAX_RUN_SECONDS, run, assistant)
    return None if value is None else max(1, math.ceil(value))


def execution_timeout_s(settings: Settings, run: Mapping[str, Any], assistant: Mapping[str, Any] | None) -> float:
    """How long one code-interpreter execution of the run may take."""
    value = _limit(MAX_EXECUTION_SECONDS, run, assistant)
    return settings.sandbox_timeout_s if value is None else value
