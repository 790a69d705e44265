"""The code-interpreter sandbox, for real: bubblewrap, an IPython kernel, short limits.

Each escape attempt must be contained, and the manager must serve executions normally afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import resource
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from loom.sandbox import (
    ExecutionResult,
    ImageOutput,
    LogOutput,
    Sandbox,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxManager,
    SandboxProvider,
    SandboxUnavailable,
    check_isolation,
)
from loom.sandbox import launcher as launcher_module
from loom.sandbox.host import UID_BLOCK, UID_BLOCKS, pick_uid_block
from tests.sandbox.conftest import require_sandbox, sandbox_settings
from tests.support.wait import wait_for_async

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def healthy(manager: SandboxManager, key: str = "health") -> None:
    """The manager still runs code normally, in an existing session and in a new one."""
    box = await manager.session(key)
    r = await box.execute("print(6 * 7)")
    assert r.status == "ok", r
    assert r.logs == "42\n"
    fresh = await manager.session(f"{key}-fresh-{time.monotonic_ns()}")
    r = await fresh.execute("print('fresh')")
    assert r.logs == "fresh\n"
    await manager.close_session(fresh.key)


# ------------------------------------------------------------------------------------- the basics


async def test_protocols(manager: SandboxManager) -> None:
    assert isinstance(manager, SandboxProvider)
    box = await manager.session("proto")
    assert isinstance(box, Sandbox)
    assert await manager.session("proto") is box


async def test_state_kept_across_executions(manager: SandboxManager) -> None:
    box = await manager.session("state")
    r1 = await box.execute("x = 20\ndef f(y):\n    return x + y")
    assert r1.status == "ok" and r1.logs == ""
    r2 = await box.execute("f(22)")
    assert r2.status == "ok"
    assert r2.logs == "42\n"  # the value of the last expression
    assert r2.sandboxed


async def test_file_put_in_and_read_by_code(manager: SandboxManager) -> None:
    box = await manager.session("files-in")
    path = await box.put_file("data.csv", b"a,b\n1,2\n3,4\n")
    assert path == "/mnt/data/data.csv"
    r = await box.execute("import pandas as pd\ndf = pd.read_csv('/mnt/data/data.csv')\nprint(int(df['b'].sum()))")
    assert r.status == "ok", r.logs
    assert r.logs.strip() == "6"
    # Names are reduced to a safe base name: no way out of /mnt/data.
    assert await box.put_file("../../etc/evil.txt", b"x") == "/mnt/data/evil.txt"
    assert await box.put_file("..\\..\\win.txt", b"x") == "/mnt/data/win.txt"
    with pytest.raises(SandboxFileError):
        await box.put_file("..", b"x")
    r = await box.execute("import os; print(sorted(os.listdir('/mnt/data')))")
    assert r.logs.strip() == "['data.csv', 'evil.txt', 'win.txt']"


async def test_a_host_file_is_copied_in_a_chunk_at_a_time(manager: SandboxManager, tmp_path: Path) -> None:
    """An input file goes in from the host file it was spooled to, never whole in this process's memory."""
    source = _patterned(tmp_path / "big.bin", 24)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    box = await manager.session("files-in-big")
    tracemalloc.start()
    try:
        assert await box.put_file("big.bin", source) == "/mnt/data/big.bin"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * (1 << 20), peak  # 24 MiB copied with at most a few 1 MiB chunks held at once
    r = await box.execute("import hashlib\nprint(hashlib.sha256(open('/mnt/data/big.bin','rb').read()).hexdigest())")
    assert r.status == "ok" and r.logs.strip() == digest, r.logs
    with pytest.raises(SandboxFileError):
        await box.put_file("huge.bin", _sparse(tmp_path / "huge.bin", 64 * 1024 * 1024))


def _patterned(path: Path, mib: int) -> Path:
    with open(path, "wb") as out:
        for n in range(mib):
            out.write(bytes([n]) * (1 << 20))
    return path


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as out:
        out.truncate(size)
    return path


async def test_matplotlib_chart_is_png(manager: SandboxManager) -> None:
    box = await manager.session("chart")
    r = await box.execute(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [4, 1, 9])\n"
        "plt.title('t')\n"
        "print('before')\n"
        "plt.show()\n"
        "print('after')"
    )
    assert r.status == "ok", r.logs
    assert len(r.images) == 1
    png = r.images[0]
    assert png.startswith(PNG_MAGIC)
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    # Text and image keep their order.
    kinds = [type(o) for o in r.outputs]
    assert kinds == [LogOutput, ImageOutput, LogOutput]
    # A figure left open at the end of a cell is shown too.
    r = await box.execute("fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])")
    assert len(r.images) == 1 and r.images[0].startswith(PNG_MAGIC)


async def test_file_written_by_code_read_back(manager: SandboxManager) -> None:
    box = await manager.session("files-out")
    r = await box.execute(
        "import os, pandas as pd\n"
        "os.makedirs('/mnt/data/out', exist_ok=True)\n"
        "pd.DataFrame({'n': [1, 2]}).to_csv('/mnt/data/out/result.csv', index=False)\n"
        "open('/mnt/data/note.txt', 'w').write('hello')"
    )
    assert r.status == "ok", r.logs
    assert await box.read_file("sandbox:/mnt/data/out/result.csv") == b"n\n1\n2\n"
    assert await box.read_file("/mnt/data/note.txt") == b"hello"
    assert await box.read_file("note.txt") == b"hello"
    files = await box.list_files()
    assert [(f.path, f.size) for f in files] == [("/mnt/data/note.txt", 5), ("/mnt/data/out/result.csv", 6)]
    with pytest.raises(SandboxFileNotFound):
        await box.read_file("/mnt/data/missing.txt")


async def test_errors_are_logs(manager: SandboxManager) -> None:
    box = await manager.session("errors")
    r = await box.execute("y = 1\nprint('start')\n1 / 0")
    assert isinstance(r, ExecutionResult)
    assert r.status == "error"
    assert r.error_name == "ZeroDivisionError"
    assert r.logs.startswith("start\n")
    assert "Traceback" in r.logs and "ZeroDivisionError: division by zero" in r.logs
    assert "\x1b[" not in r.logs  # no terminal colours
    r = await box.execute("import no_such_module")
    assert r.status == "error" and r.error_name == "ModuleNotFoundError"
    r = await box.execute("def broken(:\n  pass")
    assert r.status == "error" and "SyntaxError" in r.logs
    r = await box.execute("print(y)")  # the kernel is fine
    assert r.status == "ok" and r.logs == "1\n"


# ---------------------------------------------------------------------------- reading host files


async def test_read_file_refuses_outside_and_links(manager: SandboxManager) -> None:
    box = await manager.session("refuse")
    for bad in ("/etc/passwd", "/mnt/data/../etc/passwd", "/mnt/data", "sandbox:/tmp/x", "/mnt/datax/y"):
        with pytest.raises(SandboxFileError):
            await box.read_file(bad)
    r = await box.execute(
        "import os\n"
        "os.symlink('/etc/shadow', '/mnt/data/shadow')\n"
        "os.symlink('/', '/mnt/data/root')\n"
        "os.mkfifo('/mnt/data/fifo')\n"
        "os.link('/mnt/data/shadow', '/mnt/data/hard', follow_symlinks=False)"
    )
    assert r.status == "ok", r.logs
    with pytest.raises(SandboxFileError):
        await box.read_file("/mnt/data/shadow")  # a link to the host's file: never followed
    with pytest.raises(SandboxFileError):
        await box.read_file("/mnt/data/hard")  # a hard link to the symlink: still a link
    with pytest.raises(SandboxFileError):
        await box.read_file("/mnt/data/root/etc/passwd")
    with pytest.raises(SandboxFileError):
        await asyncio.wait_for(box.read_file("/mnt/data/fifo"), 5)  # refused, not blocked on
    listed = {f.path for f in await box.list_files()}
    assert not listed & {"/mnt/data/shadow", "/mnt/data/root", "/mnt/data/fifo", "/mnt/data/hard"}
    # put_file replaces a planted link instead of writing through it.
    assert await box.put_file("shadow", b"mine") == "/mnt/data/shadow"
    assert await box.read_file("/mnt/data/shadow") == b"mine"
    assert Path("/etc/shadow").read_bytes() != b"mine"


async def test_escape_read_host_files(manager: SandboxManager, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-HOST")
    secret.chmod(0o644)
    other = await manager.session("victim")
    await other.execute("open('/mnt/data/mine.txt', 'w').write('VICTIM-SECRET')")
    victim_host_path = other.volume.path / "mine.txt"
    assert victim_host_path.exists()
    box = await manager.session("thief")
    code = f"""
import os, glob
found = []
for p in [{str(secret)!r}, '/etc/shadow', '/etc/passwd', {str(victim_host_path)!r}, '/proc/1/root/etc/shadow',
          '/root/.bash_history', '/proc/self/root/etc/shadow']:
    try:
        found.append((p, open(p).read()[:200]))
    except OSError as e:
        found.append((p, type(e).__name__))
for pattern in ['/mnt/*', '/mnt/data/*', '/tmp/*', '/run/loom/*', '/home/*', '/work/*', '/root/*']:
    found.append((pattern, glob.glob(pattern)))
print(found)
"""
    r = await box.execute(code)
    assert r.status == "ok", r.logs
    assert "TOP-SECRET-HOST" not in r.logs
    assert "VICTIM-SECRET" not in r.logs
    assert "/etc/shadow', 'FileNotFoundError" in r.logs
    r = await box.execute("print(open('/etc/passwd').read(), end='')")
    assert r.logs == launcher_module.PASSWD  # the sandbox's own, not the host's
    await healthy(manager)


async def test_escape_network(manager: SandboxManager) -> None:
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        box = await manager.session("net")
        r = await box.execute(
            "import socket\n"
            "for host in ['127.0.0.1', '10.0.2.2', '1.1.1.1']:\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=1)\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('blocked', host, type(e).__name__)\n"
            "print(open('/proc/net/dev').read().split(chr(10))[2:])"
        )
        assert r.status == "ok", r.logs
        assert "CONNECTED" not in r.logs
        assert r.logs.count("blocked") == 3
        await asyncio.sleep(0.2)
        assert connections == []
    finally:
        server.close()
        await server.wait_closed()
    await healthy(manager)


async def test_escape_write_outside_data(manager: SandboxManager) -> None:
    box = await manager.session("writer")
    env = Path(manager.settings.sandbox_env).absolute()
    targets = ["/usr/pwn", "/opt/loom/env/pwn", "/opt/loom/boot.py", "/etc/passwd", "/pwn", "/run/loom/pwn",
               "/run/loom/k-1", "/proc/sys/kernel/hostname"]  # fmt: skip
    r = await box.execute(
        "import os\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        with open(p, 'w') as f: f.write('pwned')\n"
        "        print('WROTE', p)\n"
        "    except OSError as e:\n"
        "        print('refused', p)\n"
        "open('/tmp/scratch', 'w').write('ok')\n"
        "print(open('/tmp/scratch').read())"
    )
    assert r.status == "ok", r.logs
    assert "WROTE" not in r.logs
    assert r.logs.count("refused") == len(targets)
    assert r.logs.endswith("ok\n")  # a private /tmp is writable
    assert not (env / "pwn").exists()
    await healthy(manager)


# ------------------------------------------------------------------------------------------- limits


async def test_escape_fork_bomb(manager: SandboxManager) -> None:
    box = await manager.session("forkbomb")
    r = await box.execute(
        "import os, time\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            while True:\n"
        "                try:\n"
        "                    os.fork()\n"
        "                except OSError:\n"
        "                    time.sleep(0.001)\n"
        "    except OSError as e:\n"
        "        print('fork refused:', e.strerror)\n"
        "        break\n"
        "time.sleep(60)",
        timeout_s=2.0,
    )
    assert r.status in ("timeout", "crashed"), r
    # Contained: the session's processes stayed under the limit and are gone once it is restarted.
    r = await box.execute("import os; print(len(os.listdir('/proc')) < 200)")
    assert r.status in ("ok", "error", "timeout", "crashed")
    await manager.close_session("forkbomb")
    await healthy(manager)


async def test_escape_memory(manager: SandboxManager) -> None:
    box = await manager.session("memory")
    await box.execute("keep = 1")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await box.execute("import numpy as np\na = np.ones(2 * 1024**3 // 8)\nprint('ALLOCATED')")
    assert "ALLOCATED" not in r.logs
    if manager.cgroups.memory:
        assert r.status == "crashed" and r.kernel_restarted
        assert "out of memory" in r.logs
    else:
        assert r.status == "error" and r.error_name == "MemoryError"
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 200 * 1024  # KiB: the host did not pay for it
    r = await box.execute("print('back')")
    assert r.status == "ok" and r.logs == "back\n"
    await healthy(manager)


async def test_endless_loop_times_out(manager: SandboxManager) -> None:
    box = await manager.session("loop")
    await box.execute("kept = 'still here'")
    t0 = time.monotonic()
    r = await box.execute("while True:\n    pass", timeout_s=1.0)
    assert time.monotonic() - t0 < 5
    assert r.status == "timeout" and r.timed_out
    assert "timed out after 1 s" in r.logs
    assert not r.kernel_restarted
    r = await box.execute("print(kept)")  # interrupted, not restarted: state kept
    assert r.logs == "still here\n"
    # Code that ignores the interrupt gets its kernel restarted.
    r = await box.execute(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass", timeout_s=1.0
    )
    assert r.status == "timeout" and r.timed_out and r.kernel_restarted
    assert "restarted" in r.logs
    r = await box.execute("print('after restart')")
    assert r.status == "ok" and r.logs == "after restart\n"
    await healthy(manager)


async def test_printing_gigabytes(manager: SandboxManager) -> None:
    limit = manager.limits.max_output_bytes
    box = await manager.session("printer")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = await box.execute(
        "import sys, os\n"
        "line = 'y' * 999 + '\\n'\n"
        "for i in range(1_000_000):\n"  # 1 GB
        "    sys.stdout.write(line)\n"
        "os.write(1, b'z' * 10_000_000)\n"
        "print('THE END')",
        timeout_s=20,
    )
    assert r.truncated
    assert len(r.logs.encode()) < limit + 1024
    assert "output truncated" in r.logs
    # A kernel that bypasses its own output limit (sending on iopub itself) is bounded by the host.
    r = await box.execute(
        "k = get_ipython().kernel\n"
        "for i in range(300):\n"
        "    k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'A' * 1_000_000},\n"
        "                   parent=k.get_parent())\n"
        "print('done')",
        timeout_s=20,
    )
    assert r.truncated and len(r.logs.encode()) < limit + 1024
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 300 * 1024  # KiB
    r = await box.execute("print('quiet')")
    assert r.logs == "quiet\n"


async def test_output_truncation_keeps_the_end(manager: SandboxManager) -> None:
    box = await manager.session("tail")
    r = await box.execute("for i in range(5000):\n    print('line', i)\nraise ValueError('the end')")
    assert r.status == "error" and r.truncated
    assert r.logs.startswith("line 0\n")
    assert "output truncated" in r.logs
    assert r.logs.rstrip().endswith("ValueError: the end")


async def test_text_is_told_as_it_comes_and_starts_the_logs(manager: SandboxManager) -> None:
    box = await manager.session("told")
    pieces: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()
    code = "import time\nprint('first', flush=True)\ntime.sleep(1)\nfor i in range(5000):\n    print('line', i)\n"
    r = await box.execute(code, on_text=lambda text: pieces.append((loop.time(), text)))
    told = "".join(text for _, text in pieces)
    # What was told is the start of the logs (the truncated rest and its note come only with the result).
    assert r.truncated and told.startswith("first\nline 0\n") and r.logs.startswith(told)
    assert len(told.encode()) <= 8192 and "output truncated" not in told
    assert pieces[0][1] == "first\n" and pieces[1][0] - pieces[0][0] > 0.5  # told before the sleep ended


async def test_escape_kill_parent(manager: SandboxManager) -> None:
    box = await manager.session("killer")
    r = await box.execute(
        "import os, signal\nfor pid in (os.getppid(), 1):\n    os.kill(pid, signal.SIGKILL)\nprint('alive')"
    )
    # The sandbox's init cannot be killed from inside: nothing happened.
    assert r.status == "ok" and r.logs == "alive\n"
    r = await box.execute("import os, signal\nos.killpg(0, signal.SIGKILL)")
    assert r.status == "crashed" and r.kernel_restarted and "died" in r.logs
    r = await box.execute("import os\nos.kill(os.getpid(), 9)")
    assert r.status == "crashed"
    r = await box.execute("print('back')")
    assert r.status == "ok" and r.logs == "back\n"
    await healthy(manager)


async def test_disk_limit(manager: SandboxManager) -> None:
    box = await manager.session("disk")
    r = await box.execute("open('/mnt/data/big', 'wb').write(b'0' * (64 * 1024 * 1024))", timeout_s=10)
    assert r.status in ("error", "timeout"), r.logs
    assert "No space left" in r.logs or "File too large" in r.logs or "over its limit" in r.logs
    await box.execute("import os\nos.remove('/mnt/data/big') if os.path.exists('/mnt/data/big') else None")
    with pytest.raises(SandboxFileError):
        await box.put_file("huge.bin", b"0" * (64 * 1024 * 1024))
    assert await box.put_file("small.bin", b"0" * 1024) == "/mnt/data/small.bin"


# ----------------------------------------------------------------------------------------- sessions


async def test_session_close_removes_its_files(manager: SandboxManager) -> None:
    box = await manager.session("closing")
    await box.put_file("a.txt", b"a")
    host_dir = box.volume.path
    assert (host_dir / "a.txt").exists()
    await manager.close_session("closing")
    assert box.closed
    assert not host_dir.exists()
    with pytest.raises(SandboxUnavailable):
        await box.execute("1")
    again = await manager.session("closing")  # the key starts afresh
    r = await again.execute("import os; print(os.listdir('/mnt/data'))")
    assert r.logs == "[]\n"


async def test_pool_makes_first_execution_fast(manager: SandboxManager) -> None:
    await wait_for_async(lambda: manager.pooled >= 1, 10, "the pool to refill", interval=0.1)
    t0 = time.monotonic()
    box = await manager.session("pooled")
    r = await box.execute("print('first')")
    assert r.logs == "first\n"
    assert time.monotonic() - t0 < 0.5  # a kernel start is ~1 s: this one came from the pool
    await manager.close_session("pooled")


async def test_bounded_sessions_and_idle_expiry(tmp_path: Path) -> None:
    require_sandbox()
    m = SandboxManager(sandbox_settings(tmp_path, sandbox_max_sessions=2, sandbox_pool_size=0,
                                        sandbox_idle_timeout_s=60))  # fmt: skip
    await m.start()
    try:
        a = await m.session("a")
        await a.execute("v = 'a'")
        b = await m.session("b")
        await b.execute("v = 'b'")
        await a.execute("v")  # b is now the least recently used
        c = await m.session("c")
        assert m.live_sessions == 2
        assert b.closed and not a.closed and not c.closed
        assert await m.reap_idle() == 0
        m.idle_timeout_s = 0.2
        await asyncio.sleep(0.3)
        assert await m.reap_idle() == 2
        assert a.closed and c.closed and m.live_sessions == 0
        r = await (await m.session("a")).execute("print('new')")
        assert r.logs == "new\n"
    finally:
        await m.aclose()


async def test_unavailable_without_bubblewrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_sandbox()
    real = launcher_module._which
    monkeypatch.setattr(launcher_module, "_which", lambda name: None if name == "bwrap" else real(name))
    m = SandboxManager(sandbox_settings(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        await m.start()
    await m.aclose()
    m = SandboxManager(sandbox_settings(tmp_path, sandbox_env=tmp_path / "nowhere"))
    with pytest.raises(SandboxUnavailable, match=r"loom\.sandbox\.setup"):
        await m.start()


async def test_check_reports_isolation() -> None:
    require_sandbox()
    report = await asyncio.to_thread(check_isolation, sandbox_settings(Path("/tmp")))
    text = report.format()
    assert report.available, text
    names = {i.name for i in report.items if i.ok}
    assert {"bubblewrap", "environment", "network", "user namespace", "capabilities"} <= names
    assert "sandbox: available" in text


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from loom.config import Settings

    monkeypatch.setenv("LOOM_SANDBOX_ENV", "/opt/sbx")
    monkeypatch.setenv("LOOM_SANDBOX_TIMEOUT_S", "5")
    s = Settings()
    assert str(s.sandbox_env) == "/opt/sbx" and s.sandbox_timeout_s == 5.0
    assert os.environ["LOOM_SANDBOX_ENV"] == "/opt/sbx"


async def test_unsafe_local_is_labelled(tmp_path: Path) -> None:
    require_sandbox()
    m = SandboxManager(sandbox_settings(tmp_path, sandbox="unsafe-local", sandbox_pool_size=0))
    await m.start()
    try:
        box = await m.session("dev")
        await box.put_file("in.txt", b"local")
        r = await box.execute("print(open('in.txt').read())")
        assert r.status == "ok" and r.logs == "local\n"
        assert r.sandboxed is False
    finally:
        await m.aclose()


# ------------------------------------------------------------------ leftovers, CPU, other servers


def _host_procs_with(arg: str) -> list[int]:
    """Live (not zombie) processes of this machine with `arg` among their arguments."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if arg.encode() in argv and state not in ("Z", "X"):
            found.append(int(entry))
    return found


async def test_background_process_is_ended_after_the_execution(manager: SandboxManager) -> None:
    """A process the code leaves running in a session of its own (`start_new_session`) is ended by the
    sandbox once the execution returns; a child in the kernel's process group (a worker it keeps) is not."""
    box = await manager.session("background")
    spin, keep = f"loom-spin-{uuid.uuid4().hex}", f"{time.time_ns() % 10**6 + 1}.5"
    r = await box.execute(
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'while True: pass', {spin!r}], start_new_session=True)\n"
        f"q = subprocess.Popen(['sleep', {keep!r}])\n"
        "print('started')"
    )
    assert r.status == "ok" and r.logs == "started\n", r.logs
    assert _host_procs_with(spin) == []  # checked from the host: gone, not merely stopped
    assert len(_host_procs_with(keep)) == 1
    r = await box.execute("print(p.poll() is not None, q.poll() is None)\nq.kill()\nrc = q.wait()")
    assert r.logs == "True True\n", r.logs


async def test_cpu_limit(tmp_path: Path) -> None:
    require_sandbox()
    m = SandboxManager(sandbox_settings(tmp_path, sandbox_pool_size=0, sandbox_cpus=0.25))
    await m.start()
    try:
        box = await m.session("cpu")
        cgroup = box.kernel.spec.cgroup
        if m.cgroups.cpu:
            assert cgroup is not None and cgroup.cpu_dir is not None
            if cgroup.version == "v1":
                assert (cgroup.cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "25000"
                assert (cgroup.cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
            else:
                assert (cgroup.cpu_dir / "cpu.max").read_text().split() == ["25000", "100000"]
            assert box.kernel.scope is not None
            assert str(box.kernel.scope.kernel_pid) in (cgroup.cpu_dir / "cgroup.procs").read_text().split()
            # And it holds: spinning for a second of wall time gets about a quarter second of CPU.
            r = await box.execute(
                "import time\nt0, c0 = time.monotonic(), time.process_time()\n"
                "while time.monotonic() - t0 < 1.0:\n    pass\nprint(time.process_time() - c0)"
            )
            assert float(r.logs) < 0.6, r.logs
        else:
            # The documented fallback: no CPU limit, said by `loom sandbox check`.
            assert cgroup is None or cgroup.cpu_dir is None
            report = await asyncio.to_thread(check_isolation, sandbox_settings(tmp_path), try_volume=False)
            assert "cpu: none" in report.format()
    finally:
        await m.aclose()


_OTHER_SERVER = """
import asyncio, sys
from pathlib import Path
from loom.sandbox import SandboxManager
from tests.sandbox.conftest import sandbox_settings

async def main() -> None:
    m = SandboxManager(sandbox_settings(Path(sys.argv[1]), sandbox_pool_size=0))
    await m.start()
    r = await (await m.session("b")).execute("print('other server')")
    print(m.instance, r.logs, end="", flush=True)
    if sys.argv[2] == "crash":
        import os, signal
        box = m.get("b")
        print("", box.kernel.spec.cgroup.dirs[0], m.runtime_root, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    await m.aclose()

asyncio.run(main())
"""


def _other_server(data_dir: Path, how: str, *wrapper: str) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [*wrapper, sys.executable, "-c", _OTHER_SERVER, str(data_dir), how],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


async def test_another_server_in_another_pid_namespace_leaves_ours_alone(
    manager: SandboxManager, tmp_path: Path
) -> None:
    """Two servers on one host, each in its pid namespace, sharing the cgroup tree and /tmp: the one
    starting cannot see the other's pid, and must not take its cgroups, runtime folder or kernels."""
    box = await manager.session("neighbour")
    await box.put_file("keep.txt", b"mine")
    await box.execute("x = 'still here'")
    cgroup = box.kernel.spec.cgroup
    runtime = manager.runtime_root
    assert runtime is not None
    done = await asyncio.to_thread(_other_server, tmp_path, "close", "unshare", "--pid", "--fork", "--mount-proc")
    assert done.returncode == 0, done.stderr[-2000:]
    instance, said = done.stdout.split(" ", 1)
    assert said == "other server\n" and instance != manager.instance
    if cgroup is not None:
        assert all(d.is_dir() for d in cgroup.dirs)
    assert runtime.is_dir() and (runtime / "boot.py").exists()
    r = await box.execute("print(x, open('/mnt/data/keep.txt').read())")
    assert r.logs == "still here mine\n", r.logs
    await manager.close_session("neighbour")
    await healthy(manager)  # a new kernel starts from the same runtime folder


async def test_a_dead_instances_leftovers_are_cleaned(tmp_path: Path) -> None:
    """What a crashed server left (its instance provably gone: same pid namespace, its pid free) is
    removed by the next server on the same data dir."""
    require_sandbox()
    done = await asyncio.to_thread(_other_server, tmp_path, "crash")
    assert done.returncode == -9, done.stderr[-2000:]
    words = done.stdout.split()
    instance, group, runtime = words[0], words[-2], words[-1]
    volumes = tmp_path / "sandbox" / "volumes"
    assert Path(group).is_dir() and Path(runtime).is_dir()
    assert [v for v in volumes.iterdir() if instance in v.name]
    m = SandboxManager(sandbox_settings(tmp_path, sandbox_pool_size=0))
    await m.start()
    try:
        assert not Path(group).exists()
        assert not Path(runtime).exists()
        assert not [v for v in volumes.iterdir() if instance in v.name]
        assert not (tmp_path / "sandbox" / "instances" / f"{instance}.json").exists()
    finally:
        await m.aclose()


_UID_SERVER = """
import asyncio, json, os, sys
from pathlib import Path
from loom.sandbox import SandboxManager
from tests.sandbox.conftest import sandbox_settings

async def main() -> None:
    m = SandboxManager(sandbox_settings(Path(sys.argv[1]), sandbox_pool_size=0))
    await m.start()
    box = await m.session("b")
    marker = json.loads((Path(sys.argv[1]) / "sandbox" / "instances" / f"{m.instance}.json").read_text())
    print(os.getpid(), box.volume.uid, marker.get("uid_block"), m.instance, flush=True)
    sys.stdin.readline()  # stays up (its marker live) until told
    await m.aclose()

asyncio.run(main())
"""


def test_servers_in_other_pid_namespaces_get_disjoint_sandbox_uids(tmp_path: Path) -> None:
    """Two servers on one host, each in a fresh pid namespace (so with equal pids), other data dirs:
    the second sees the first's marker in /tmp and never hands out one of its sandbox uids."""
    require_sandbox()
    repo = Path(__file__).resolve().parents[2]
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _UID_SERVER]
    pipe = subprocess.PIPE
    first = subprocess.Popen([*argv, str(tmp_path / "a")], cwd=repo, stdin=pipe, stdout=pipe, stderr=pipe, text=True)
    try:
        assert first.stdout is not None
        line = first.stdout.readline()
        second = subprocess.run(
            [*argv, str(tmp_path / "b")], cwd=repo, input="\n", capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 0, second.stderr[-2000:]
    finally:
        _, err = first.communicate("\n", timeout=120)
    assert first.returncode == 0, err[-2000:]
    pid_a, uid_a, block_a, instance_a = line.split()
    pid_b, uid_b, block_b, instance_b = second.stdout.split()
    assert pid_a == pid_b and instance_a != instance_b
    assert uid_a != uid_b
    assert block_a != block_b
    base = sandbox_settings(tmp_path).sandbox_uid_base
    assert (int(uid_a) - base) // UID_BLOCK == int(block_a) and (int(uid_b) - base) // UID_BLOCK == int(block_b)


def test_a_uid_block_held_by_another_instance_is_not_taken() -> None:
    first = pick_uid_block("00000000002a", set(), UID_BLOCKS)
    assert first == 42
    assert pick_uid_block("00000000002a", {42, 43}, UID_BLOCKS) == 44
    assert pick_uid_block("0000000fffff", {UID_BLOCKS - 1}, UID_BLOCKS) == 0
    with pytest.raises(SandboxUnavailable):
        pick_uid_block("00000000002a", {0, 1, 2}, 3)
