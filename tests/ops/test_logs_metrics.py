"""What a running server tells its operator: the start-up report, the access log, failed runs and upstream
errors in the log, and `GET /metrics` (parsed by prometheus_client's own parser)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_KEY, sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer
from tests.support.wait import wait_for

NO_SANDBOX_ENV = "/nonexistent/loom-sandbox-env"


@pytest.fixture(scope="module")
def ops_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    """Logs in JSON at info (access log on), no upstream retries."""
    env = {"LOOM_UPSTREAM_MAX_RETRIES": "0", "LOOM_SANDBOX_ENV": NO_SANDBOX_ENV}
    with LoomServer(
        database_url=database_url_for(backend),
        upstream_base_url=upstream.base_url,
        extra_env=env,
        serve_args=("--log-level", "info", "--log-format", "json"),
    ) as server:
        yield server


def log_records(server: LoomServer) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def metric_samples(server: LoomServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(
        server.base_url.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {DEFAULT_KEY}"}
    )
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_log_line_is_json_and_the_access_log_has_request_ids(ops_server: LoomServer) -> None:
    response = httpx.get(ops_server.base_url + "/models", headers={"Authorization": f"Bearer {DEFAULT_KEY}"})
    request_id = response.headers["x-request-id"]

    def access_line() -> dict[str, Any] | None:
        return next((r for r in log_records(ops_server) if r.get("request_id") == request_id), None)

    line = wait_for(access_line, what="the access log line")
    assert line["logger"] == "loom.access" and line["route"] == "/v1/models"
    assert line["message"].startswith("GET /v1/models 200 ")
    # uvicorn's own lines go through the same format.
    assert any(str(r["logger"]).startswith("uvicorn") for r in log_records(ops_server))


def test_startup_report(ops_server: LoomServer, upstream: FakeUpstream) -> None:
    messages = [str(r["message"]) for r in log_records(ops_server)]
    assert any(m.startswith("Loom ") and ops_server.base_url.rsplit(":", 1)[0] in m for m in messages)
    assert f"data: {ops_server.data_dir}" in messages
    assert any(m.startswith(f"model backend default ({upstream.base_url}): answered") for m in messages)
    assert "embedder: all-MiniLM-L6-v2 (384 dimensions)" in messages  # the default
    assert "keys: API keys required" in messages
    assert f"code interpreter: unavailable: no environment at {NO_SANDBOX_ENV} (run `loom sandbox setup`)" in messages


def test_startup_report_warns_about_an_unreachable_backend() -> None:
    with LoomServer(upstream_base_url="http://127.0.0.1:9/v1") as server:
        log = server.log()
    assert "WARNING loom: model backend default (http://127.0.0.1:9/v1) did not answer GET /models" in log
    # The server started anyway (LoomServer waited for /health).


def test_startup_report_warns_when_openai_has_no_key(tmp_path: object) -> None:
    server = LoomServer(upstream_base_url="https://api.openai.com/v1", extra_env={"LOOM_UPSTREAM_API_KEY": ""})
    with server:
        log = server.log()
    assert "model backend default (https://api.openai.com/v1): no API key" in log


def test_no_access_log() -> None:
    with LoomServer(serve_args=("--log-level", "info", "--no-access-log")) as server:
        httpx.get(server.base_url + "/models", headers={"Authorization": f"Bearer {DEFAULT_KEY}"})
        log = server.log()
    assert "Loom " in log and "loom.access" not in log


def test_failed_run_and_upstream_error_are_logged(ops_server: LoomServer, upstream: FakeUpstream) -> None:
    client = sdk_client(ops_server)
    upstream.push(Turn.error(500, "the model server fell over"))
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "failed" and run.last_error is not None

    def failure() -> dict[str, object] | None:
        return next((r for r in log_records(ops_server) if r.get("run_id") == run.id), None)

    line = wait_for(failure, what="the failed run's log line")
    assert line["level"] == "warning" and line["project"] == "default" and line["status"] == "failed"
    assert line["code"] == run.last_error.code == "server_error"
    assert run.last_error.message in str(line["message"])
    upstream_lines = [r for r in log_records(ops_server) if r["logger"] == "loom.upstream"]
    assert any(r["backend"] == "default" and "fell over" in str(r["message"]) for r in upstream_lines)


def test_metrics_move_after_a_run(ops_server: LoomServer, upstream: FakeUpstream) -> None:
    url = ops_server.base_url.removesuffix("/v1") + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer sk-wrong"}).status_code == 401
    client: openai.OpenAI = sdk_client(ops_server)
    before = metric_samples(ops_server)
    upstream.push(Turn.reply("Hello there", usage={"prompt_tokens": 11, "completion_tokens": 3}))
    assistant = client.beta.assistants.create(model="gpt-4o-mini")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "hi"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "completed"
    after = metric_samples(ops_server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("loom_runs_ended_total", status="completed") == 1
    assert moved("loom_upstream_calls_total", backend="default") == 1
    assert moved("loom_tokens_total", model="gpt-4o-mini", kind="prompt") == 11
    assert moved("loom_tokens_total", model="gpt-4o-mini", kind="completion") == 3
    assert moved("loom_run_time_to_first_token_seconds_count") == 1
    assert moved("loom_run_duration_seconds_count") == 1
    assert moved("loom_http_requests_total", method="POST", route="/v1/threads/{thread_id}/runs", status="200") == 1
    assert moved("loom_http_request_duration_seconds_count", method="POST", route="/v1/assistants") == 1
    assert ("loom_sandbox_sessions_live", ()) in after and ("loom_ingest_queue_depth", ()) in after


def test_a_stop_after_the_startup_report_shuts_down_cleanly(upstream: FakeUpstream) -> None:
    """The report lists the backend's models; the connection it opened must belong to the server's event
    loop, or the shutdown's closing of the model clients fails ("Event loop is closed") and skips closing
    the blob store and the database."""
    server = LoomServer(upstream_base_url=upstream.base_url, serve_args=("--log-level", "info"))
    with server:
        assert server.proc is not None
        httpx.get(server.base_url + "/models", headers={"Authorization": f"Bearer {DEFAULT_KEY}"}).raise_for_status()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        log = server.log()
    assert f"model backend default ({upstream.base_url}): answered" in log
    assert "Application shutdown complete" in log, log[-2000:]
    assert "Application shutdown failed" not in log and "Event loop is closed" not in log, log[-2000:]
