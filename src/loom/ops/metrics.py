"""Prometheus metrics (`GET /metrics`). Every instrumented site is one line calling into this module.

Collectors live in prometheus_client's default registry (one Loom server per process); gauges that
read a container's state (sandbox sessions, ingestion queue) are a collector registered by the app.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_R = TypeVar("_R")
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RUN = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "loom_http_requests", "HTTP requests, by method, route template and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "loom_http_request_duration_seconds",
    "HTTP request time (streams: until the end)",
    ["method", "route"],
    buckets=_LATENCY,
)
RUNS_ENDED = Counter("loom_runs_ended", "Runs reaching a final status, by status", ["status"])
RUN_DURATION = Histogram(
    "loom_run_duration_seconds", "Time a run executes in this process (claim to end or requires_action)", buckets=_RUN
)
TIME_TO_FIRST_TOKEN = Histogram(
    "loom_run_time_to_first_token_seconds", "From a run's claim to its first streamed token", buckets=_TTFT
)
UPSTREAM_CALLS = Counter("loom_upstream_calls", "Chat Completions calls, by backend", ["backend"])
UPSTREAM_ERRORS = Counter(
    "loom_upstream_errors", "Chat Completions calls failed, by backend and code", ["backend", "code"]
)
UPSTREAM_RETRIES = Counter("loom_upstream_retries", "Chat Completions retries, by backend", ["backend"])
TOKENS = Counter("loom_tokens", "Tokens used, by model and kind (prompt, completion)", ["model", "kind"])
TOOL_EXECUTIONS = Counter(
    "loom_tool_executions", "Server tool executions, by tool type and outcome", ["type", "outcome"]
)
TOOL_DURATION = Histogram(
    "loom_tool_duration_seconds", "Server tool execution time, by tool type", ["type"], buckets=_LATENCY
)
INGEST_QUEUE = Gauge(
    "loom_ingest_queue_depth", "Vector store files waiting for or in ingestion (as last seen, up to the batch read)"
)
INGEST_OUTCOMES = Counter(
    "loom_ingest_files", "Vector store files ingested, by outcome (completed, failed, …)", ["outcome"]
)


def run_ended(status: str) -> None:
    if status in ("completed", "failed", "cancelled", "expired", "incomplete"):
        RUNS_ENDED.labels(status).inc()


def tokens(model: str, prompt: int, completion: int) -> None:
    TOKENS.labels(model, "prompt").inc(prompt)
    TOKENS.labels(model, "completion").inc(completion)


class StateCollector(Collector):
    """Gauges read when scraped: sandbox sessions live and pooled."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.read()
        for name, doc in (
            ("loom_sandbox_sessions_live", "Code interpreter sessions live"),
            ("loom_sandbox_sessions_pooled", "Code interpreter kernels started in advance, waiting"),
        ):
            yield GaugeMetricFamily(name, doc, value=state.get(name, 0.0))

    def describe(self) -> Iterator[Any]:
        return iter(())


def register_state(read: Callable[[], dict[str, float]]) -> StateCollector:
    collector = StateCollector(read)
    REGISTRY.register(collector)
    return collector


def unregister(collector: StateCollector) -> None:
    REGISTRY.unregister(collector)


def first_token(since: float) -> float:
    """Observe the time to first token from `since` (monotonic); returns 0.0 (nothing left to observe)."""
    TIME_TO_FIRST_TOKEN.observe(time.monotonic() - since)
    return 0.0


async def timed_tool(kind: str, execution: Awaitable[_R]) -> _R:
    """Await a server tool's execution, counting it (by outcome) and timing it."""
    started = time.monotonic()
    outcome = "error"
    try:
        result = await execution
        outcome = "ok"
        return result
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        TOOL_EXECUTIONS.labels(kind, outcome).inc()
        TOOL_DURATION.labels(kind).observe(time.monotonic() - started)
