"""`LOOM_SANDBOX=unsafe-local` runs the kernel on the host: what the sandbox ends after an execution must be
the session's own processes only. Tested where a mistake cannot reach the machine: the server runs in a
pid namespace of its own (`unshare --pid --fork --mount-proc`) beside a sentinel process that must
survive; a broadcast signal (`kill(-1)`) would reach the sentinel, but nothing outside the namespace."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.code_interpreter.conftest import ENV, run_code
from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream
from tests.support.server import LoomServer

SENTINEL = "86399"  # `sleep 86399`: the sentinel, by its argv


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[1], []).append(int(entry))
    out: set[int] = set()
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out.add(pid)
        stack.extend(children.get(pid, []))
    return out


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


@pytest.fixture()
def namespaced_server(upstream: FakeUpstream, tmp_path: Path) -> Iterator[LoomServer]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    wrapper = (
        "unshare", "--pid", "--fork", "--mount-proc",
        "sh", "-c", f'sleep {SENTINEL} & "$@"', "sh",
    )  # fmt: skip
    server = LoomServer(
        upstream_base_url=upstream.base_url,
        wrapper=wrapper,
        extra_env={
            "LOOM_SANDBOX": "unsafe-local",
            "LOOM_SANDBOX_ENV": str(ENV),
            "LOOM_SANDBOX_TIMEOUT_S": "2",
            "LOOM_SANDBOX_POOL_SIZE": "0",
            "TMPDIR": str(tmp),  # its runtime folders, apart from every other server's
        },
    )
    server.start()
    try:
        yield server
    finally:
        # The namespace's init (`sh`, pid 1 inside) takes every process of the namespace with it.
        assert server.proc is not None
        for pid in _descendants(server.proc.pid):
            if _stat(pid) is not None and _stat(pid)[1] == server.proc.pid:  # type: ignore[index]
                os.kill(pid, signal.SIGKILL)
        server.proc.wait(10)


def test_unsafe_local_ends_only_its_own_processes(namespaced_server: LoomServer, upstream: FakeUpstream) -> None:
    server = namespaced_server
    assert server.proc is not None
    inside = _descendants(server.proc.pid)
    (sentinel,) = [p for p in inside if _cmdline(p) == ["sleep", SENTINEL]]
    client = sdk_client(server, timeout=120)
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Please compute."}]).id

    r = run_code(client, upstream, thread, assistant.id, "import os\nprint(os.getuid() == os.geteuid())")
    assert r.logs == "True\n", r.logs
    assert _alive(sentinel)

    r = run_code(client, upstream, thread, assistant.id, "kept = 1\nwhile True:\n    pass")
    assert "timed out after 2 s" in r.logs, r.logs
    assert _alive(sentinel)

    fork = (
        "import os, time\n"
        "kids = []\n"
        "for _ in range(20):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(600)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "print(len(kids), kept)\n"
    )
    r = run_code(client, upstream, thread, assistant.id, fork)
    assert r.logs == "20 1\n", r.logs
    # The sentinel (beside the server, in its namespace) survived every execution, and so did the server.
    assert _alive(sentinel)
    assert server.proc.poll() is None
    # The 20 children are gone (ended, and reaped by the kernel): the kernel is alone again.
    kernels = [p for p in _descendants(server.proc.pid) if any(a.endswith("boot.py") for a in _cmdline(p))]
    assert len(kernels) == 1, kernels
    assert _descendants(kernels[0]) == set()
    r = run_code(client, upstream, thread, assistant.id, "print(kept)")  # the same kernel, still serving
    assert r.logs == "1\n", r.logs
    assert _alive(sentinel)
