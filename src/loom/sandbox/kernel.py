"""One kernel process (in its sandbox) and the host's side of its Jupyter connection.

The host talks to the kernel over ZeroMQ IPC sockets in the kernel's runtime folder, with pyzmq's asyncio
sockets and jupyter_client's `Session` for signing. The host bounds what the kernel can make it hold:
each message is capped (ZMQ_MAXMSGSIZE), the iopub queue is short (RCVHWM), text past the output limit
is dropped as it arrives, and images past their count are not kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from loom.sandbox.launcher import LaunchSpec
from loom.sandbox.procs import REAP_CODE, ProcessScope
from loom.sandbox.types import ImageOutput, LogOutput, SandboxLimits, SandboxUnavailable

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_IMAGE_BYTES = 8 * 1024 * 1024
IOPUB_HWM = 64
STDERR_TAIL = 16 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class KernelDied(Exception):
    def __init__(self, collected: OutputCollector) -> None:
        super().__init__("the kernel died")
        self.collected = collected


class OutputCollector:
    """Text and images of one execution, bounded: the head of the text, then (if it overflowed) its tail."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.max_images = limits.max_images
        self.head_budget = max(1, limits.max_output_bytes * 3 // 4)
        self.tail_budget = max(1, limits.max_output_bytes - self.head_budget)
        self.outputs: list[LogOutput | ImageOutput] = []
        self.head_used = 0
        self.tail: deque[str] = deque()
        self.tail_len = 0
        self.dropped = 0
        self.images_dropped = 0
        self.truncated = False

    def _append_text(self, s: str) -> None:
        if self.outputs and isinstance(self.outputs[-1], LogOutput):
            self.outputs[-1] = LogOutput(self.outputs[-1].text + s)
        else:
            self.outputs.append(LogOutput(s))

    def text(self, s: str) -> None:
        if not s:
            return
        if not self.truncated:
            n = len(s.encode("utf-8", "surrogatepass"))
            if self.head_used + n <= self.head_budget:
                self.head_used += n
                self._append_text(s)
                return
            room = self.head_budget - self.head_used
            head = s.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
            self._append_text(head)
            self.head_used = self.head_budget
            self.truncated = True
            s = s[len(head) :]
        self.tail.append(s)
        self.tail_len += len(s)
        while self.tail_len > self.tail_budget and self.tail:
            first = self.tail[0]
            excess = self.tail_len - self.tail_budget
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_len -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_len -= excess
                self.dropped += excess

    def image(self, png: bytes) -> None:
        if len([o for o in self.outputs if isinstance(o, ImageOutput)]) >= self.max_images:
            self.images_dropped += 1
            return
        self.outputs.append(ImageOutput(png))

    def finish(self, notice: str | None) -> list[LogOutput | ImageOutput]:
        if self.truncated:
            tail = "".join(self.tail)
            # Start the tail on a line boundary when one is near.
            cut = tail.find("\n")
            if 0 <= cut < 200 and cut + 1 < len(tail):
                self.dropped += cut + 1
                tail = tail[cut + 1 :]
            self._append_text(f"\n[... output truncated: {self.dropped} characters not shown ...]\n{tail}")
        if self.images_dropped:
            self._append_text(f"\n[{self.images_dropped} more image(s) not shown: limit {self.max_images}]\n")
        if notice:
            logs = "".join(o.text for o in self.outputs if isinstance(o, LogOutput))
            self._append_text(("" if not logs or logs.endswith("\n") else "\n") + notice + "\n")
        return self.outputs


@dataclass
class RawExecution:
    status: str  # "ok", "error", "interrupted" (stopped in time), "stuck" (must be restarted)
    collected: OutputCollector
    error: tuple[str, str] | None
    stop_reason: str | None  # "timeout", or the watchdog's reason
    duration_s: float
    saw_idle: bool = True  # False: the reply came but iopub's "idle" did not (outputs may be missing)


class KernelProcess:
    """A started kernel: its process, its sockets, and execute / interrupt / kill."""

    def __init__(self, spec: LaunchSpec, context: zmq.asyncio.Context, limits: SandboxLimits) -> None:
        self.spec = spec
        self.ctx = context
        self.limits = limits
        self.proc: asyncio.subprocess.Process | None = None
        self.session = Session(key=spec.connection["key"].encode(), signature_scheme="hmac-sha256")
        self.session.session = uuid.uuid4().hex
        self._stderr_tail = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self.shell: zmq.asyncio.Socket | None = None
        self.iopub: zmq.asyncio.Socket | None = None
        self.control: zmq.asyncio.Socket | None = None
        self.oom_kills_at_start = 0
        self.started_at = 0.0
        self.closed = False
        self.scope: ProcessScope | None = None

    # -------------------------------------------------------------------------------------- lifecycle

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self.closed

    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace")

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            chunk = await self.proc.stderr.read(65536)
            if not chunk:
                return
            self._stderr_tail += chunk
            if len(self._stderr_tail) > STDERR_TAIL:
                del self._stderr_tail[: len(self._stderr_tail) - STDERR_TAIL]

    def _socket(self, kind: int, port_key: str) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, IOPUB_HWM)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            sock.setsockopt(zmq.IDENTITY, uuid.uuid4().hex.encode())
        conn = self.spec.connection
        sock.connect(f"ipc://{conn['ip']}-{conn[port_key]}")
        return sock

    async def start(self, timeout_s: float = 60.0) -> None:
        """Start the process and wait until the kernel answers (kernel_info) and has run a warm-up."""
        spec = self.spec
        self.started_at = time.monotonic()
        if spec.cgroup is not None:
            self.oom_kills_at_start = spec.cgroup.oom_kills()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=spec.env,
                pass_fds=spec.pass_fds,
                start_new_session=True,
                cwd="/",
            )
        finally:
            spec.close_fds()
        self.scope = ProcessScope(self.proc.pid, spec.cgroup)
        self._stderr_task = asyncio.create_task(self._read_stderr())
        self.shell = self._socket(zmq.DEALER, "shell_port")
        self.iopub = self._socket(zmq.SUB, "iopub_port")
        self.control = self._socket(zmq.DEALER, "control_port")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.proc.returncode is not None:
                    await asyncio.sleep(0.05)  # let the stderr reader catch up
                    raise SandboxUnavailable(
                        f"The sandbox kernel exited while starting (status {self.proc.returncode}): "
                        f"{self.stderr_tail().strip()[-2000:] or 'no message'}"
                    )
                if time.monotonic() > deadline:
                    raise SandboxUnavailable(f"The sandbox kernel did not start within {timeout_s:.0f} s.")
                msg = self.session.msg("kernel_info_request", {})
                await self.shell.send_multipart(self.session.serialize(msg))
                reply = await self._await_reply(self.shell, msg["header"]["msg_id"], 0.25)
                if reply is not None:
                    break
            # iopub is PUB/SUB: a subscription takes effect a little after connecting, and what is
            # published before that is lost. Warm up until an execution's outputs (its "idle") arrive.
            while True:
                raw = await self.execute("pass", timeout_s=max(1.0, deadline - time.monotonic()), _quiet=True)
                if raw.status == "ok" and raw.saw_idle:
                    break
                if time.monotonic() > deadline:
                    raise SandboxUnavailable("The sandbox kernel started but its output channel did not work.")
            # Everything running now is the sandbox's machinery; anything later was started by code.
            await asyncio.to_thread(self.scope.snapshot)
            if spec.seal:
                # The sockets exist: from now on the sandbox can neither add nor replace files here.
                os.chown(spec.runtime_dir, 0, 0)
                os.chmod(spec.runtime_dir, 0o755)
        except BaseException:
            await self.kill()
            raise

    async def _await_reply(self, sock: zmq.asyncio.Socket, msg_id: str, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not await sock.poll(int(remaining * 1000) + 1):
                return None
            msg = self._recv(await sock.recv_multipart(copy=True))
            if msg is not None and msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg

    def _recv(self, frames: list[bytes]) -> dict[str, Any] | None:
        try:
            _idents, msg_list = self.session.feed_identities(frames, copy=True)
            return self.session.deserialize(msg_list, content=True, copy=True)
        except Exception:
            return None  # malformed or wrongly signed: ignore

    def kill_sync(self) -> None:
        """Kill the sandbox now (its whole pid namespace goes with bwrap) and clean up the sockets."""
        self.closed = True
        if (
            self.scope is not None
            and self.spec.cgroup is None
            and self.proc is not None
            and self.proc.returncode is None
        ):
            # No cgroup (unsafe-local): its process tree, including what left its process group. (The
            # process is not reaped yet: its pid cannot have been reused.)
            self.scope.kill_all()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.proc.kill()
        if self.spec.cgroup is not None:
            self.spec.cgroup.kill_all()
        for sock in (self.shell, self.iopub, self.control):
            if sock is not None:
                sock.close(linger=0)
        self.shell = self.iopub = self.control = None

    async def kill(self) -> None:
        self.kill_sync()
        if self.proc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5)
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(BaseException):
                await self._stderr_task
        if self.spec.cgroup is not None:
            await asyncio.to_thread(self.spec.cgroup.remove)
        await asyncio.to_thread(_rmtree, self.spec.runtime_dir)

    async def end_strays(self, *, force: bool) -> None:
        """End the processes the last execution left (see `ProcessScope.end_strays`), then let the kernel
        reap those that were its children (zombies count against the process limit)."""
        scope = self.scope
        if scope is None or not self.alive:
            return
        reap = await asyncio.to_thread(scope.end_strays, force=force)
        if reap and self.alive:
            with contextlib.suppress(KernelDied):
                await self.execute(REAP_CODE.format(pids=reap), timeout_s=5.0, _quiet=True)

    def died_of_oom(self) -> bool:
        cg = self.spec.cgroup
        return cg is not None and cg.oom_kills() > self.oom_kills_at_start

    # -------------------------------------------------------------------------------------- execution

    async def interrupt(self) -> None:
        if self.control is None:
            return
        msg = self.session.msg("interrupt_request", {})
        with contextlib.suppress(zmq.ZMQError):
            await self.control.send_multipart(self.session.serialize(msg))

    async def execute(
        self,
        code: str,
        *,
        timeout_s: float,
        watchdog: Callable[[], Awaitable[str | None]] | None = None,
        _quiet: bool = False,
    ) -> RawExecution:
        """Run code and collect its outputs. Raises KernelDied (with what was collected) if the kernel dies.

        On the deadline (or when `watchdog` returns a reason) the kernel is interrupted; if it does not
        finish within the grace period the result's status is "stuck" and the caller must restart it.
        """
        if self.shell is None or self.iopub is None or not self.alive:
            raise KernelDied(OutputCollector(self.limits))
        started = time.monotonic()
        out = OutputCollector(self.limits)
        msg = self.session.msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": not _quiet,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        msg_id = msg["header"]["msg_id"]
        await self.shell.send_multipart(self.session.serialize(msg))
        poller = zmq.asyncio.Poller()
        poller.register(self.shell, zmq.POLLIN)
        poller.register(self.iopub, zmq.POLLIN)
        deadline = started + timeout_s
        reply: dict[str, Any] | None = None
        idle = False
        interrupted_at: float | None = None
        reply_at: float | None = None
        error: tuple[str, str] | None = None
        stop_reason: str | None = None
        last_watch = started
        stuck = False
        while True:
            now = time.monotonic()
            if reply is not None and (idle or (reply_at is not None and now - reply_at > 0.5)):
                break
            if self.proc is None or self.proc.returncode is not None:
                raise KernelDied(out)
            if interrupted_at is None and now >= deadline:
                interrupted_at, stop_reason = now, "timeout"
                await self.interrupt()
            if interrupted_at is not None and now - interrupted_at > self.limits.interrupt_grace_s:
                stuck = True
                break
            if watchdog is not None and interrupted_at is None and now - last_watch > 0.25:
                last_watch = now
                reason = await watchdog()
                if reason:
                    interrupted_at, stop_reason = now, reason
                    await self.interrupt()
            wait = 0.1 if interrupted_at is not None else min(0.1, max(0.0, deadline - now))
            events = dict(await poller.poll(int(wait * 1000) + 1))
            if self.iopub in events:
                for _ in range(1000):
                    try:
                        frames = await self.iopub.recv_multipart(flags=zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    m = self._recv(frames)
                    if m is None or m.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    if m.get("msg_type") == "error":
                        c = m.get("content") or {}
                        error = (str(c.get("ename", "")), str(c.get("evalue", "")))
                    if self._on_iopub(m, out):
                        idle = True
            if self.shell in events:
                for _ in range(100):
                    try:
                        frames = await self.shell.recv_multipart(flags=zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    m = self._recv(frames)
                    if m is not None and m.get("parent_header", {}).get("msg_id") == msg_id:
                        reply = m
                        reply_at = time.monotonic()
        if stuck:
            status = "stuck"
        elif interrupted_at is not None:
            status = "interrupted"
        elif reply is not None and (reply.get("content") or {}).get("status") == "error":
            status = "error"
            if error is None:
                c = reply.get("content") or {}
                error = (str(c.get("ename", "")), str(c.get("evalue", "")))
        else:
            status = "ok"
        return RawExecution(status, out, error, stop_reason, time.monotonic() - started, idle)

    def _on_iopub(self, m: dict[str, Any], out: OutputCollector) -> bool:
        """Collect one iopub message; True when it is the kernel's "idle" for our request."""
        kind = m.get("msg_type")
        content = m.get("content") or {}
        if kind == "status":
            return content.get("execution_state") == "idle"
        if kind == "stream":
            text = content.get("text")
            if isinstance(text, str):
                out.text(text)
        elif kind == "error":
            tb = content.get("traceback")
            if isinstance(tb, list) and tb:
                text = "\n".join(str(line).rstrip("\n") for line in tb)
            else:
                text = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
            out.text(_ANSI.sub("", text) + "\n")
        elif kind in ("execute_result", "display_data", "update_display_data"):
            data = content.get("data") or {}
            png = data.get("image/png") if isinstance(data, dict) else None
            if isinstance(png, str) and len(png) <= MAX_IMAGE_BYTES * 4 // 3 + 4:
                try:
                    raw = base64.b64decode(png)
                except ValueError:
                    raw = b""
                if raw.startswith(PNG_MAGIC):
                    out.image(raw)
                    return False
            text = data.get("text/plain") if isinstance(data, dict) else None
            if isinstance(text, str):
                out.text(_ANSI.sub("", text) + "\n")
        return False


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def host_pids(root_pid: int) -> list[int]:
    """root_pid and all its descendants (from /proc), for measuring a sandbox's memory."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out
