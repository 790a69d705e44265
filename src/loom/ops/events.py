"""What the engine reports as it works, each a one-line call at its site: logged and counted."""

from __future__ import annotations

import logging
from typing import Any

from loom.ops import metrics

runs_log = logging.getLogger("loom.runs")
upstream_log = logging.getLogger("loom.upstream")


def run_moved(project: str, run: dict[str, Any]) -> None:
    """A run reached `run["status"]`: final statuses are counted; failed, expired and incomplete logged."""
    state = run["status"]
    metrics.run_ended(state)
    if state not in ("failed", "expired", "incomplete"):
        return
    error = run.get("last_error") or {}
    code = error.get("code") or (run.get("incomplete_details") or {}).get("reason") or ""
    message = error.get("message") or ("waited for tool outputs past expires_at" if state == "expired" else "")
    runs_log.warning(
        "run %s %s: %s: %s",
        run["id"],
        state,
        code,
        message,
        extra={"fields": {"run_id": run["id"], "project": project, "status": state, "code": code}},
    )


def upstream_failed(backend: str, error: Any, *, attempt: int, retrying: bool) -> None:
    """A Chat Completions call failed (`retrying`: it is tried again)."""
    code = getattr(error, "code", "server_error")
    if retrying:
        metrics.UPSTREAM_RETRIES.labels(backend).inc()
    else:
        metrics.UPSTREAM_ERRORS.labels(backend, code).inc()
    upstream_log.warning(
        "backend %s: %s%s",
        backend,
        getattr(error, "message", str(error)),
        f" (attempt {attempt + 1}, retrying)" if retrying else "",
        extra={"fields": {"backend": backend, "code": code}},
    )
