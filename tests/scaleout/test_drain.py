"""Graceful drain: SIGTERM stops a replica taking requests at once, lets the run it executes finish, gives
up its sandbox sessions (the next run elsewhere is told the state is lost) and closes them cleanly."""

from __future__ import annotations

import signal
import time

import httpx

from loom.scaleout.affinity import LOST_NOTE
from tests.code_interpreter.conftest import new_thread, run_code, sandbox_roots
from tests.conftest import sdk_client
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
