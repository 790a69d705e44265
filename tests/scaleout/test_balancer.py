"""The official SDK through a real nginx (deploy/nginx.conf) doing round-robin over two replicas with
separate data directories on one PostgreSQL and one object store: code-interpreter state whichever replica
runs the run, streaming, tool outputs submitted through the other replica, file bytes (upload, ingestion,
file_search, code-interpreter input, download) whichever replica serves, and one replica killed mid-run."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import openai
import pytest

from tests.code_interpreter.conftest import new_thread
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.scaleout.conftest import Cluster
from tests.support.nginx import Nginx
from tests.support.server import LoomServer
from tests.support.wait import wait_for

TERMINAL = {"requires_action", "cancelled", "completed", "failed", "expired", "incomplete"}


@pytest.fixture()
def balancer(cluster: Cluster) -> Iterator[Nginx]:
    nginx = Nginx([s.port for s in cluster.replicas]).start()
    try:
        yield nginx
    finally:
        nginx.stop()


def _client(cluster: Cluster, nginx: Nginx) -> openai.OpenAI:
    # (A stand-in whose base_url is the balancer's: `sdk_client` takes a server.)
    return sdk_client(cast(LoomServer, nginx), timeout=120)


def _create(client: openai.OpenAI, thread: str, assistant: str) -> tuple[Any, str]:
    """A run created through the balancer, and the replica that received (and executes) it."""
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread, assistant_id=assistant)
    return raw.parse(), raw.headers["x-loom-replica"]


def _wait(client: openai.OpenAI, thread: str, run_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread)
        if run.status in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(0.05)


def _code_run(client: openai.OpenAI, upstream: FakeUpstream, thread: str, assistant: str, code: str) -> tuple[str, str]:
    """(the code's logs, the replica that executed the run)."""
    upstream.push(Turn.calls(ToolCallSpec("code_interpreter", {"code": code})), Turn.reply("Done."))
    run, replica = _create(client, thread, assistant)
    run = _wait(client, thread, run.id)
    assert run.status == "completed", (run.status, run.last_error)
    steps = client.beta.threads.runs.steps.list(thread_id=thread, run_id=run.id, order="asc")
    (call,) = [c for s in steps if s.step_details.type == "tool_calls" for c in s.step_details.tool_calls]
    assert call.type == "code_interpreter"
    return "".join(o.logs for o in call.code_interpreter.outputs if o.type == "logs"), replica


def _next_goes_to(client: openai.OpenAI, replica: str) -> None:
    """Steer the balancer: with one nginx worker round-robin alternates strictly between the two replicas,
    so after a request that lands on the other one, the next request lands on `replica`."""
    for _ in range(3):
        if client.models.with_raw_response.list().headers["x-loom-replica"] != replica:
            return
    raise AssertionError(f"the balancer does not alternate: every request went to {replica}")


NOTES = (
    b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges over the Zarn river.\n"
    + b"".join(b"Ledger line %d: the ferry from Gnarlytown carried %d crates.\n" % (i, i * 7) for i in range(400))
)


def test_file_bytes_through_the_balancer(cluster: Cluster, balancer: Nginx, upstream: FakeUpstream) -> None:
    """Upload, ingestion, file_search, code-interpreter input and download of one file in object storage,
    with requests served by both replicas (each with a data directory of its own)."""
    client = _client(cluster, balancer)
    replicas = {_replica_id(s) for s in cluster.replicas}
    assert len(replicas) == 2
    raw = client.files.with_raw_response.create(file=("notes.txt", NOTES), purpose="assistants")
    uploaded, uploader = raw.parse(), raw.headers["x-loom-replica"]
    (other,) = replicas - {uploader}

    # A vector store with the file, ingested by whichever replica took the job, from the object store.
    _next_goes_to(client, other)
    raw_store = client.vector_stores.with_raw_response.create(name="notes", file_ids=[uploaded.id])
    assert raw_store.headers["x-loom-replica"] == other
    store = raw_store.parse()
    wait_for(
        lambda: client.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id).status != "in_progress",
        60,
        "the file's ingestion",
    )
    vs_file = client.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id)
    assert vs_file.status == "completed", vs_file.last_error

    # file_search, in a run the replica that did not store the file executes: the answer cites the file.
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[
            {"type": "file_search", "file_search": {"ranking_options": {"score_threshold": 0.0}}},
            {"type": "code_interpreter"},
        ],
        tool_resources={"file_search": {"vector_store_ids": [store.id]}},
    ).id
    thread = new_thread(client, messages=[{"role": "user", "content": "What is the capital of Freedonia?"}])
    marker = "【0:0†notes.txt】"
    upstream.push(
        Turn.calls(ToolCallSpec("file_search", {"queries": ["capital of Freedonia"]})),
        Turn.reply(f"Gnarlytown {marker}."),
    )
    _next_goes_to(client, other)
    run, executor = _create(client, thread, assistant)
    assert executor == other
    run = _wait(client, thread, run.id)
    assert run.status == "completed", (run.status, run.last_error)
    text = client.beta.threads.messages.list(thread_id=thread, order="desc", limit=1).data[0].content[0]
    assert text.type == "text" and text.text.value == f"Gnarlytown {marker}."
    (citation,) = text.text.annotations
    assert citation.type == "file_citation" and citation.file_citation.file_id == uploaded.id

    # The file as a code-interpreter input, read by code in runs that each replica executes.
    digest = hashlib.sha256(NOTES).hexdigest()
    code = "import hashlib\nprint(hashlib.sha256(open('/mnt/data/notes.txt', 'rb').read()).hexdigest())"
    for replica in sorted(replicas):
        attached = new_thread(
            client,
            messages=[
                {
                    "role": "user",
                    "content": "Hash the notes.",
                    "attachments": [{"file_id": uploaded.id, "tools": [{"type": "code_interpreter"}]}],
                }
            ],
        )
        _next_goes_to(client, replica)
        logs, executor = _code_run(client, upstream, attached, assistant, code)
        assert executor == replica
        assert logs == digest + "\n", logs

    # Download through each replica: the same bytes.
    for replica in sorted(replicas):
        _next_goes_to(client, replica)
        content = client.files.with_raw_response.content(uploaded.id)
        assert content.headers["x-loom-replica"] == replica
        assert content.content == NOTES


def test_the_whole_flow_through_the_balancer(cluster: Cluster, balancer: Nginx, upstream: FakeUpstream) -> None:
    client = _client(cluster, balancer)
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[
            {"type": "code_interpreter"},
            {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}},
        ],
    ).id
    thread = new_thread(client)
    logs, first = _code_run(client, upstream, thread, assistant, "counter = 1\nprint(counter)")
    assert logs == "1\n"
    executed = {first}
    replicas = {_replica_id(s) for s in cluster.replicas}
    last = first
    for n in range(2, 6):
        # Each run steered to the replica that did not run the last one (left to the polls between runs,
        # round-robin could send every run to the same replica).
        _next_goes_to(client, next(iter(replicas - {last})))
        logs, replica = _code_run(client, upstream, thread, assistant, "counter += 1\nprint(counter)")
        last = replica
        assert logs == f"{n}\n", logs  # the same kernel, whichever replica ran the run
        executed.add(replica)
    assert len(executed) == 2, executed  # both replicas executed runs of the thread

    # Streaming through the balancer: every event, in order, unbuffered.
    upstream.push(Turn.reply("Streamed through nginx.", chunk_size=3, chunk_delay_s=0.02))
    with client.beta.threads.runs.stream(thread_id=thread, assistant_id=assistant) as stream:
        events = [e.event for e in stream]
        final = stream.get_final_run()
    assert final.status == "completed"
    assert events[0] == "thread.run.created" and events[-1] == "thread.run.completed", events
    assert events.count("thread.message.delta") >= 5, events
    assert stream.get_final_messages()[0].content[0].text.value == "Streamed through nginx."  # type: ignore[union-attr]

    # Function calling: the tool outputs go through the replica that did not receive the run.
    upstream.push(Turn.calls(ToolCallSpec("lookup", {})), Turn.reply("It is 42."))
    run, creator = _create(client, thread, assistant)
    run = _wait(client, thread, run.id)
    assert run.status == "requires_action", (run.status, run.last_error)
    assert run.required_action is not None
    (pending,) = run.required_action.submit_tool_outputs.tool_calls
    for _ in range(2):  # one worker: strict alternation, so the next request goes to the other replica
        peek = client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread)
        if peek.headers["x-loom-replica"] == creator:
            break
    raw = client.beta.threads.runs.with_raw_response.submit_tool_outputs(
        run.id, thread_id=thread, tool_outputs=[{"tool_call_id": pending.id, "output": "42"}]
    )
    assert raw.headers["x-loom-replica"] != creator
    assert _wait(client, thread, run.id).status == "completed"
    answer = client.beta.threads.messages.list(thread_id=thread, order="desc", limit=1).data[0]
    assert answer.content[0].text.value == "It is 42."  # type: ignore[union-attr]


def test_a_replica_killed_mid_run(cluster: Cluster, balancer: Nginx, upstream: FakeUpstream) -> None:
    client = _client(cluster, balancer)
    assistant = client.beta.assistants.create(model="gpt-4o").id
    thread = new_thread(client)
    upstream.push(Turn.reply("never finished", chunk_size=1, chunk_delay_s=0.5))
    run, replica = _create(client, thread, assistant)
    wait_for(
        lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread).status == "in_progress",
        30,
        "the run to start",
    )
    (victim,) = [s for s in cluster.replicas if _replica_id(s) == replica]
    victim.kill()
    # The survivor's sweep takes the lapsed lease: the run ends, never stuck in progress.
    ended = _wait(client, thread, run.id, timeout=60)
    assert ended.status == "failed", ended.status
    assert ended.last_error is not None and ended.last_error.code == "server_error"
    # And the survivor serves everything that follows, through the balancer.
    for _ in range(4):
        upstream.push(Turn.reply("Still here."))
        after = client.beta.threads.runs.create_and_poll(thread_id=thread, assistant_id=assistant, poll_interval_ms=50)
        assert after.status == "completed", (after.status, after.last_error)
    assert len(client.beta.threads.messages.list(thread_id=thread).data) >= 5


def _replica_id(server: Any) -> str:
    return httpx.get(f"http://127.0.0.1:{server.port}/health").headers["x-loom-replica"]
