"""Escape attempts through runs: the code comes from the (scripted) model, as it would from a model a user
talked into it. Each is contained, the run completes with what happened as the tool's output, and the
server keeps serving (the same thread's next run, a new thread, the API)."""

from __future__ import annotations

import re
import socket
import threading
import uuid
from pathlib import Path

import openai
import pytest

from tests.code_interpreter.conftest import (
    MAX_OUTPUT_BYTES,
    TIMEOUT_S,
    find_host_file,
    healthy,
    new_thread,
    run_code,
    sandbox_roots,
)
from tests.fakes.upstream import FakeUpstream
from tests.support.server import LoomServer


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_network_to_a_host_listener(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    accepted: list[object] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    watcher = threading.Thread(target=accept, daemon=True)
    watcher.start()
    thread = new_thread(client)
    code = (
        "import socket\n"
        "for host in ['127.0.0.1', 'localhost', '10.0.2.2', '1.1.1.1']:\n"
        "    try:\n"
        f"        socket.create_connection((host, {port}), timeout=1)\n"
        "        print('CONNECTED', host)\n"
        "    except OSError as e:\n"
        "        print('blocked', host, type(e).__name__)\n"
    )
    try:
        r = run_code(client, upstream, thread, assistant_id, code)
    finally:
        stop.set()
        watcher.join(5)
        listener.close()
    assert "CONNECTED" not in r.logs and r.logs.count("blocked") == 4, r.logs
    assert accepted == []
    healthy(client, upstream, thread, assistant_id)


def test_reading_host_files(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ci_server: LoomServer
) -> None:
    # A victim thread with a secret in its /mnt/data, and a secret in the server's database.
    victim = new_thread(client, messages=[{"role": "user", "content": "DB-SECRET-" + uuid.uuid4().hex}])
    marker = f"victim-{uuid.uuid4().hex}.txt"
    run_code(client, upstream, victim, assistant_id, f"open('/mnt/data/{marker}', 'w').write('VICTIM-SECRET')")
    (victim_host_path,) = find_host_file(marker, sandbox_roots(ci_server))
    database = (ci_server.data_dir / "loom.db").resolve()
    assert database.exists() and b"DB-SECRET-" in database.read_bytes() + (
        database.with_name("loom.db-wal").read_bytes() if database.with_name("loom.db-wal").exists() else b""
    )
    targets = [
        str(database),
        str(database) + "-wal",
        str(ci_server.data_dir / "server.log"),
        "/etc/shadow",
        str(victim_host_path),
        f"/proc/1/root{victim_host_path}",
        "/proc/1/root/etc/shadow",
        "/proc/self/root/etc/shadow",
        "/root/.bash_history",
    ]
    code = (
        "import glob, os\n"
        f"for i, p in enumerate({targets!r}):\n"
        "    try:\n"
        "        data = open(p, 'rb').read()\n"
        "        print('READ', i, len(data), b'SECRET' in data)\n"
        "    except OSError as e:\n"
        "        print('refused', i, type(e).__name__)\n"
        "for pattern in ['/mnt/*', '/mnt/data/*', '/tmp/*', '/dev/shm/*', '/run/*', '/proc/*/root/mnt/data/*']:\n"
        "    hits = glob.glob(pattern)\n"
        f"    print(pattern, [h for h in hits if 'victim-' in h or 'loom' in h and 'db' in h])\n"
    )
    thief = new_thread(client)
    r = run_code(client, upstream, thief, assistant_id, code)
    assert "READ" not in r.logs, r.logs
    assert r.logs.count("refused") == len(targets), r.logs
    assert "victim-" not in r.logs and "SECRET" not in r.logs and "loom.db" not in r.logs
    assert "SECRET" not in r.tool_message["content"]
    # The victim's own session still has its file.
    r = run_code(client, upstream, victim, assistant_id, f"print(open('/mnt/data/{marker}').read())")
    assert r.logs == "VICTIM-SECRET\n"
    healthy(client, upstream, thief, assistant_id)


def test_writing_outside_mnt_data(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    canary = Path("/tmp") / f"loom-canary-{uuid.uuid4().hex}"
    targets = ["/usr/pwn", "/etc/passwd", "/pwn", "/opt/pwn", "/proc/sys/kernel/hostname", str(canary)]
    code = (
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        with open(p, 'w') as f: f.write('pwned')\n"
        "        print('WROTE', p)\n"
        "    except OSError as e:\n"
        "        print('refused', p)\n"
    )
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, code)
    # The sandbox's /tmp is its own: writing there is fine and lands nowhere on the host.
    assert r.logs.count("refused") == len(targets) - 1, r.logs
    assert "WROTE /usr" not in r.logs and "WROTE /etc" not in r.logs and "WROTE /pwn" not in r.logs
    assert not canary.exists()
    assert not Path("/usr/pwn").exists() and not Path("/pwn").exists() and not Path("/opt/pwn").exists()
    assert "pwned" not in Path("/etc/passwd").read_text()
    healthy(client, upstream, thread, assistant_id)


FORK_BOMB = (
    "import os, time\n"
    "for _ in range(50):\n"
    "    try:\n"
    "        if os.fork() == 0:\n"
    "            while True:\n"
    "                try:\n"
    "                    os.fork()\n"
    "                except OSError:\n"
    "                    pass\n"
    "    except OSError as e:\n"
    "        print('fork refused:', e.strerror)\n"
    "        break\n"
)


@pytest.mark.parametrize("ending", ["waits", "returns"])
def test_fork_bomb(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ending: str) -> None:
    """The bomb's first process waits (stopped by the time limit), or returns at once leaving the bomb
    running in the background."""
    code = FORK_BOMB + ("time.sleep(600)\n" if ending == "waits" else "print('returned')\n")
    thread = new_thread(client)
    run_code(client, upstream, thread, assistant_id, "kept = 'here'")
    bomb = run_code(client, upstream, thread, assistant_id, code, reply="That did not work.")
    if ending == "waits":
        assert f"timed out after {TIMEOUT_S} s" in bomb.logs or "out of memory" in bomb.logs, bomb.logs
    else:
        assert "returned" in bomb.logs or "out of memory" in bomb.logs, bomb.logs
    # The kernel is alone again: the bomb's processes are gone, and do not eat the session's process and
    # memory budget (and the host's CPU) in the next runs.
    count = "import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))"
    r = run_code(client, upstream, thread, assistant_id, count)
    # (A notice may come first: the bomb can make the cgroup's OOM killer restart the kernel, or, on a loaded
    # host, the kernel may not answer the interrupt within its grace period and be restarted.)
    counts = re.findall(r"^(\d+)$", r.logs, re.MULTILINE)
    assert counts and int(counts[-1]) <= 3, r.logs  # the sandbox's init, the kernel (and its boot wrapper)
    # Variables are lost only with a notice saying so; without one, they are kept.
    if "are gone" not in bomb.logs + r.logs:
        r = run_code(client, upstream, thread, assistant_id, "print(kept)")
        assert r.logs == "here\n", (bomb.logs, r.logs)
    healthy(client, upstream, thread, assistant_id)


def test_multiprocessing_pool_survives_between_runs(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str
) -> None:
    """Cleaning up after a fork bomb does not break a pool of workers kept in a variable."""
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, "import multiprocessing as mp\npool = mp.Pool(2)\nprint('ok')")
    assert r.logs == "ok\n", r.logs
    r = run_code(client, upstream, thread, assistant_id, "print(pool.map(abs, [-1, -2, 3]))")
    assert r.logs == "[1, 2, 3]\n", r.logs


def test_memory_far_past_the_limit(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ci_server: LoomServer
) -> None:
    assert ci_server.proc is not None
    before = rss_kib(ci_server.proc.pid)
    thread = new_thread(client)
    run_code(client, upstream, thread, assistant_id, "kept = 1")
    r = run_code(
        client, upstream, thread, assistant_id, "import numpy as np\na = np.ones(4 * 1024**3 // 8)\nprint('ALLOCATED')"
    )
    assert "ALLOCATED" not in r.logs
    assert "out of memory" in r.logs or "MemoryError" in r.logs, r.logs
    assert "out of memory" in r.tool_message["content"] or "MemoryError" in r.tool_message["content"]
    assert rss_kib(ci_server.proc.pid) - before < 200 * 1024  # the server did not pay for it
    healthy(client, upstream, thread, assistant_id)


def test_endless_loop_times_out(client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str) -> None:
    thread = new_thread(client)
    run_code(client, upstream, thread, assistant_id, "kept = 'still here'")
    r = run_code(client, upstream, thread, assistant_id, "while True:\n    pass", reply="It ran too long.")
    assert f"timed out after {TIMEOUT_S} s" in r.logs, r.logs
    assert "timed out" in r.tool_message["content"]
    r = run_code(client, upstream, thread, assistant_id, "print(kept)")  # interrupted, state kept
    assert r.logs == "still here\n"
    healthy(client, upstream, thread, assistant_id)


def test_printing_gigabytes(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ci_server: LoomServer
) -> None:
    assert ci_server.proc is not None
    before = rss_kib(ci_server.proc.pid)
    code = (
        "import sys, os\n"
        "line = 'y' * 999 + '\\n'\n"
        "for i in range(2_000_000):\n"  # 2 GB, unless the time limit comes first
        "    sys.stdout.write(line)\n"
        "os.write(1, b'z' * 10_000_000)\n"
        "print('THE END')\n"
    )
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, code)
    assert len(r.logs.encode()) < MAX_OUTPUT_BYTES + 1024
    assert "output truncated" in r.logs, r.logs[-500:]
    assert len(r.tool_message["content"].encode()) < MAX_OUTPUT_BYTES + 2048
    assert rss_kib(ci_server.proc.pid) - before < 300 * 1024
    healthy(client, upstream, thread, assistant_id)


@pytest.mark.parametrize(
    "code",
    [
        "import os, signal\nfor pid in (os.getppid(), 1):\n    os.kill(pid, signal.SIGKILL)\nprint('alive')",
        "import os, signal\nos.killpg(0, signal.SIGKILL)",
        "import os\nos.kill(os.getpid(), 9)",
    ],
    ids=["parent-and-init", "process-group", "itself"],
)
def test_killing_the_kernels_parent(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ci_server: LoomServer, code: str
) -> None:
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, code)
    # Either nothing happened (the sandbox's init cannot be killed from inside) or the kernel died and
    # was restarted: the run says so and completes.
    assert r.logs == "alive\n" or "died" in r.logs, r.logs
    assert ci_server.proc is not None and ci_server.proc.poll() is None
    healthy(client, upstream, thread, assistant_id)


def test_links_to_host_files_are_not_returned(
    client: openai.OpenAI, upstream: FakeUpstream, assistant_id: str, ci_server: LoomServer
) -> None:
    """Files the code leaves in /mnt/data become Files: a link planted there to a host file (the server's
    database, /etc/shadow) is never followed; the model is told the file could not be returned."""
    database = (ci_server.data_dir / "loom.db").resolve()
    code = (
        "import os\n"
        f"os.symlink({str(database)!r}, '/mnt/data/db.sqlite')\n"
        "os.symlink('/etc/shadow', '/mnt/data/shadow.txt')\n"
        "os.symlink('/proc/1/root/etc/shadow', '/mnt/data/root-shadow.txt')\n"
        "print('planted')\n"
    )
    reply = "Files: sandbox:/mnt/data/db.sqlite sandbox:/mnt/data/shadow.txt sandbox:/mnt/data/root-shadow.txt"
    thread = new_thread(client)
    r = run_code(client, upstream, thread, assistant_id, code, reply=reply)
    assert r.logs == "planted\n"
    assert "file written" not in r.tool_message["content"]
    message = client.beta.threads.messages.list(thread, order="desc", limit=1).data[0]
    assert message.content[0].type == "text" and message.content[0].text.value == reply
    assert message.content[0].text.annotations == []
    outputs = [f for f in client.files.list(purpose="assistants_output").data if f.created_at >= r.run.created_at]
    assert not [f for f in outputs if f.filename in ("db.sqlite", "shadow.txt", "root-shadow.txt")]
    healthy(client, upstream, thread, assistant_id)
