"""A thread's code-interpreter session lives on one replica; runs on any other replica run their code
there (over the internal channel); when that replica is gone the next run starts afresh and is told so."""

from __future__ import annotations

import httpx
import openai

from loom.scaleout.affinity import LOST_NOTE
from tests.code_interpreter.conftest import find_host_file, new_thread, run_code, sandbox_roots
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.scaleout.conftest import Cluster
from tests.support.server import LoomServer
from tests.support.wait import wait_for


def _assistant(client: openai.OpenAI) -> str:
    return client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}]).id


def _replica(server: LoomServer) -> str:
    return httpx.get(f"http://127.0.0.1:{server.port}/health").headers["x-loom-replica"]


def test_a_run_on_another_replica_uses_the_owners_session(cluster: Cluster, upstream: FakeUpstream) -> None:
    a, b = cluster.replicas
    assert _replica(a) != _replica(b)
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = _assistant(on_a)
    thread = new_thread(on_a)
    first = run_code(on_a, upstream, thread, assistant, "kept = 6 * 7\nn = open('/mnt/data/n.txt', 'w').write('41')")
    assert first.logs == ""
    # B has no session of its own for the thread: the code runs in A's kernel and A's /mnt/data.
    second = run_code(on_b, upstream, thread, assistant, "print(kept + 1, open('/mnt/data/n.txt').read())")
    assert second.logs == "43 41\n", second.logs
    assert second.tool_message["content"] == "43 41\n"
    # Output files the owner makes come back by id and are readable from either replica's API.
    chart = run_code(
        on_b,
        upstream,
        thread,
        assistant,
        "import matplotlib.pyplot as plt\nplt.plot([1, 2], [2, 1])\nplt.show()\nprint(kept)",
    )
    assert chart.logs == "42\n"
    (image,) = [o for o in chart.call.code_interpreter.outputs if o.type == "image"]
    assert on_a.files.retrieve(image.image.file_id).purpose == "assistants_output"
    # Another thread first run on B is owned by B, and A forwards to it.
    other = new_thread(on_b)
    run_code(on_b, upstream, other, assistant, "mine = 'b'")
    assert run_code(on_a, upstream, other, assistant, "print(mine)").logs == "b\n"


def test_owner_gone_starts_afresh_and_the_model_is_told(cluster: Cluster, upstream: FakeUpstream) -> None:
    a, b = cluster.replicas
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = _assistant(on_a)
    thread = new_thread(on_a)
    run_code(on_a, upstream, thread, assistant, "kept = 1")
    a.kill()
    after = run_code(on_b, upstream, thread, assistant, "print('kept' in globals())")
    assert after.logs == LOST_NOTE + "\nFalse\n", after.logs
    assert after.tool_message["content"].startswith(LOST_NOTE)
    # B owns the new session now: state is kept again, and nothing more is said about a loss.
    run_code(on_b, upstream, thread, assistant, "kept = 2")
    assert run_code(on_b, upstream, thread, assistant, "print(kept)").logs == "2\n"


def test_internal_channel_needs_the_shared_secret(cluster: Cluster) -> None:
    a, _b = cluster.replicas
    url = f"http://127.0.0.1:{a.port}/internal/sandbox/execute"
    body = {"project": "default", "thread_id": "thread_x", "code": "print(1)", "file_ids": [], "call_id": "c"}
    # No secret (a project API key is not one): the route does not exist.
    for headers in ({}, {"authorization": "Bearer sk-test-default"}):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == "Invalid URL (POST /internal/sandbox/execute)"
    for secret in ("sk-test-default", "wrong", ""):
        r = httpx.post(url, json=body, headers={"x-loom-internal-secret": secret})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_deleting_a_thread_elsewhere_closes_its_session_on_the_owner(cluster: Cluster, upstream: FakeUpstream) -> None:
    """A thread deleted through a replica that does not own its session: the owner is told and closes the
    session at once (its /mnt/data goes), rather than keeping it until its idle timeout."""
    a, b = cluster.replicas
    on_a, on_b = sdk_client(a, timeout=120), sdk_client(b, timeout=120)
    assistant = _assistant(on_a)
    thread = new_thread(on_a)
    kept = new_thread(on_a)
    run_code(on_a, upstream, thread, assistant, "open('/mnt/data/gone-with-thread.txt', 'w').write('x')")
    run_code(on_a, upstream, kept, assistant, "open('/mnt/data/kept-with-thread.txt', 'w').write('y')")
    roots = sandbox_roots(a)
    assert find_host_file("gone-with-thread.txt", roots)
    assert on_b.beta.threads.delete(thread).deleted
    wait_for(lambda: not find_host_file("gone-with-thread.txt", roots), 10, "the owner to close the session")
    # Only that thread's session: the other one lives on, still used through B.
    assert find_host_file("kept-with-thread.txt", roots)
    assert run_code(on_b, upstream, kept, assistant, "print(open('/mnt/data/kept-with-thread.txt').read())").logs == (
        "y\n"
    )
