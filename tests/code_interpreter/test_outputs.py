"""Files the code writes: only those the answer links become Files, streamed to the file store (never
whole in the server's memory), bounded in number and size per answer; the model is told what was left
out. A file name that is not valid UTF-8 does not break the run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.code_interpreter.conftest import ENV, new_thread, require_sandbox, run_code
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.support.server import LoomServer

MAX_FILES = 5
MAX_FILE_MB = 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream) -> Iterator[LoomServer]:
    require_sandbox()
    s = LoomServer(
        upstream_base_url=upstream.base_url,
        extra_env={
            "LOOM_SANDBOX_ENV": str(ENV),
            "LOOM_SANDBOX_TIMEOUT_S": "30",
            "LOOM_SANDBOX_DISK_MB": "400",
            "LOOM_SANDBOX_POOL_SIZE": "0",
            "LOOM_SANDBOX_MAX_OUTPUT_FILES": str(MAX_FILES),
            "LOOM_SANDBOX_MAX_OUTPUT_FILE_MB": str(MAX_FILE_MB),
        },
    )
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server: LoomServer) -> openai.OpenAI:
    return sdk_client(server, timeout=120)


@pytest.fixture(scope="module")
def assistant_id(client: openai.OpenAI) -> str:
    return client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}]).id


def _outputs_since(client: openai.OpenAI, since: int) -> list[str]:
    return [f.filename for f in client.files.list(purpose="assistants_output").data if f.created_at >= since]


def test_unlinked_files_are_not_files_and_memory_stays_bounded(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, server: LoomServer
) -> None:
    assert server.proc is not None
    thread = new_thread(client)
    run_code(client, upstream, thread, assistant_id, "print('warm')")  # the kernel is started
    rss_before = _status_kib(server.proc.pid, "VmRSS")
    since = int(time.time())
    code = (
        "import os\n"
        "for n in (1, 2):\n"  # two 150 MB files (sparse: no disk needed)
        "    with open(f'/mnt/data/big{n}.bin', 'wb') as f:\n"
        "        f.truncate(150 * 1024 * 1024)\n"
        "os.makedirs('/mnt/data/many', exist_ok=True)\n"
        "for i in range(2000):\n"
        "    open(f'/mnt/data/many/f{i}.txt', 'w').write(str(i))\n"
        "print('written')\n"
    )
    r = run_code(client, upstream, thread, assistant_id, code, reply="All done.")
    assert r.logs == "written\n"
    assert _outputs_since(client, since) == []  # the answer linked nothing: no File was made
    told = r.tool_message["content"]
    assert len(told.encode()) < 4096, len(told)
    assert "more files written, not listed" in told, told
    assert f"over the {MAX_FILE_MB:.1f} MB limit" in told, told
    peak = _status_kib(server.proc.pid, "VmHWM")
    assert peak - rss_before < 100 * 1024, (rss_before, peak)  # KiB: the 300 MB were never read in


def test_linked_files_become_files_and_bad_names_are_skipped(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, server: LoomServer
) -> None:
    thread = new_thread(client)
    since = int(time.time())
    code = (
        "open('/mnt/data/report.csv', 'w').write('a,b\\n1,2\\n')\n"
        "with open('/mnt/data/huge.bin', 'wb') as f:\n"
        f"    f.truncate({MAX_FILE_MB + 5} * 1024 * 1024)\n"
        "open(b'/mnt/data/bad-\\xff\\xfe.txt', 'wb').write(b'not utf-8 name')\n"
        "open('/mnt/data/unlinked.txt', 'w').write('x')\n"
        "print('ok')\n"
    )
    reply = "See sandbox:/mnt/data/report.csv and sandbox:/mnt/data/huge.bin."
    r = run_code(client, upstream, thread, assistant_id, code, reply=reply)  # completed, not server_error
    assert r.logs == "ok\n"
    told = r.tool_message["content"]
    assert "[file written: sandbox:/mnt/data/report.csv]" in told
    assert "sandbox:/mnt/data/huge.bin (25.0 MB), over the 20.0 MB limit" in told
    assert "bad-" not in told
    message = client.beta.threads.messages.list(thread, order="desc", limit=1).data[0]
    assert message.content[0].type == "text"
    annotations = message.content[0].text.annotations
    assert [(a.type, a.text) for a in annotations] == [("file_path", "sandbox:/mnt/data/report.csv")]
    assert annotations[0].type == "file_path"
    assert client.files.content(annotations[0].file_path.file_id).read() == b"a,b\n1,2\n"
    assert _outputs_since(client, since) == ["report.csv"]
    # The session is fine, the bad name still there for the code.
    r = run_code(client, upstream, thread, assistant_id, "import os\nprint(sorted(os.listdir(b'/mnt/data'))[0])")
    assert r.logs == "b'bad-\\xff\\xfe.txt'\n", r.logs
