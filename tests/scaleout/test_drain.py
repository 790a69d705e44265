"""Graceful drain: SIGTERM stops a replica taking requests at once, lets the run it executes finish, gives
up its sandbox sessions (the next run elsewhere is told the state is lost) and closes them cleanly."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx

from loom.scaleout.affinity import LOST_NOTE
from tests.code_interpreter.conftest import new_thread, run_code, sandbox_roots
from tests.conftest import DEFAULT_KEY, sdk_client
from tests.fakes.upstream import FakeUpstream, Turn
from tests.scaleout.conftest import Cluster
from tests.support.wait import wait_for


def test_sigterm_drains_a_replica(cluster: Cluster, upstream: FakeUpstream) -> None:
    a, b = cluster.replicas
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = on_a.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}]).id
    thread = new_thread(on_a)
    run_code(on_a, upstream, thread, assistant, "kept = 1")
    runtime = [p for p in sandbox_roots(a) if p != a.data_dir]
    other = new_thread(on_a)
    upstream.push(Turn.reply("Finished while draining.", chunk_size=2, chunk_delay_s=0.25))
    run = on_a.beta.threads.runs.create(thread_id=other, assistant_id=assistant)
    wait_for(lambda: on_b.beta.threads.runs.retrieve(run.id, thread_id=other).status == "in_progress", 30, "start")
    assert a.proc is not None
    a.proc.terminate()  # SIGTERM, to our own child
    # At once: no new request is taken (a clean refusal, never a hang).
    time.sleep(0.3)
    started = time.monotonic()
    try:
        status = httpx.get(f"http://127.0.0.1:{a.port}/health", timeout=5).status_code
    except httpx.ConnectError:
        status = 0
    assert status in (0, 503) and time.monotonic() - started < 2
    # The run executing there finishes (not failed by a sweep).
    deadline = time.monotonic() + 60
    while (current := on_b.beta.threads.runs.retrieve(run.id, thread_id=other)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert current.status == "completed", (current.status, current.last_error)
    text = on_b.beta.threads.messages.list(thread_id=other, order="desc", limit=1).data[0].content[0]
    assert text.type == "text" and text.text.value == "Finished while draining."
    # (uvicorn ends by re-raising the signal it handled, once its shutdown is complete.)
    assert a.proc.wait(30) in (0, -signal.SIGTERM)
    # Its sandbox was closed cleanly (runtime folder gone), and it gave its sessions up: the next run of
    # the thread, on B, starts afresh at once (no lease to wait for) and the model is told.
    assert runtime and not any(p.exists() for p in runtime), runtime
    started = time.monotonic()
    after = run_code(on_b, upstream, thread, assistant, "print('kept' in globals())")
    assert after.logs == LOST_NOTE + "\nFalse\n", after.logs
    assert time.monotonic() - started < 10


def _send_head(port: int, path: str, body: bytes, first: int) -> socket.socket:
    """A POST on a fresh connection, its headers and the first `first` bytes of its body sent."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=15)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {DEFAULT_KEY}\r\n"
        f"OpenAI-Beta: assistants=v2\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn.sendall(head.encode() + body[:first])
    return conn


def _read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(rest) < int(headers["content-length"]):
        chunk = conn.recv(65536)
        assert chunk, "the connection closed mid-body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest


def test_a_run_create_reaching_a_draining_replica_is_503_at_once(cluster: Cluster, upstream: FakeUpstream) -> None:
    """A run create that reaches a replica once it drains (here: a request whose body was still coming when
    SIGTERM came, so uvicorn lets it finish) answers 503 `server_error` in OpenAI's shape, at once, and
    creates nothing: the client retries it elsewhere."""
    a, b = cluster.replicas
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = on_a.beta.assistants.create(model="gpt-4o").id
    busy, idle = new_thread(on_a), new_thread(on_a)
    # A run in flight on A, so that its drain lasts.
    upstream.push(Turn.reply("Finished while draining.", chunk_size=2, chunk_delay_s=0.25))
    running = on_a.beta.threads.runs.create(thread_id=busy, assistant_id=assistant)
    wait_for(lambda: on_b.beta.threads.runs.retrieve(running.id, thread_id=busy).status == "in_progress", 30, "start")
    body = json.dumps({"assistant_id": assistant}).encode()
    conn = _send_head(a.port, f"/v1/threads/{idle}/runs", body, first=5)
    with conn:
        time.sleep(0.3)  # uvicorn has the request (headers read, body awaited)
        assert a.proc is not None
        a.proc.terminate()  # SIGTERM, to our own child
        time.sleep(0.3)
        started = time.monotonic()
        conn.sendall(body[5:])
        status, headers, payload = _read_response(conn)
    assert time.monotonic() - started < 5
    assert status == 503, (status, payload)
    assert headers.get("x-request-id", "").startswith("req_")
    assert json.loads(payload) == {
        "error": {
            "message": "The server is overloaded or not ready yet.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    # Nothing was created; the other replica takes the retry.
    assert on_b.beta.threads.runs.list(thread_id=idle).data == []
    upstream.push(Turn.reply("Served elsewhere."))
    retried = on_b.beta.threads.runs.create_and_poll(thread_id=idle, assistant_id=assistant, poll_interval_ms=50)
    assert retried.status == "completed", (retried.status, retried.last_error)
    assert a.proc.wait(30) in (0, -signal.SIGTERM)
    assert on_b.beta.threads.runs.retrieve(running.id, thread_id=busy).status == "completed"
