"""One kernel process (in its sandbox) and the host's side of its Jupyter connection.

The host talks to the kernel over ZeroMQ IPC sockets in the kernel's runtime folder, with pyzmq's asyncio
sockets and jupyter_client's `Session` for signing. The host bounds what the kernel can make it hold:
each message is capped (ZMQ_MAXMSGSIZE), the iopub queue is short (RCVHWM), text past the output limit
is dropped as it arrives, and images past their count are not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from loom.sandbox.launcher import LaunchSpec
from loom.sandbox.outputs import OutputCollector, collect_iopub
from loom.sandbox.procs import REAP_CODE, ProcessScope
from loom.sandbox.types import SandboxLimits, SandboxUnavailable

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
IOPUB_HWM = 64
STDERR_TAIL = 16 * 1024


class KernelDied(Exception):
    def __init__(self, collected: OutputCollector) -> None:
        super().__init__("the kernel died")
        self.collected = collected


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
        on_text: Callable[[str], None] | None = None,
        _quiet: bool = False,
    ) -> RawExecution:
        """Run code and collect its outputs. Raises KernelDied (with what was collected) if the kernel dies.

        On the deadline (or when `watchdog` returns a reason) the kernel is interrupted; if it does not
        finish within the grace period the result's status is "stuck" and the caller must restart it.
        `on_text` is told the text outputs as they come (`OutputCollector`).
        """
        if self.shell is None or self.iopub is None or not self.alive:
            raise KernelDied(OutputCollector(self.limits))
        started = time.monotonic()
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
        collector = OutputCollector(self.limits, on_text)
        exchange = _Exchange(msg["header"]["msg_id"], collector, started, started + timeout_s)
        await self.shell.send_multipart(self.session.serialize(msg))
        await self._follow(exchange, self.shell, self.iopub, watchdog)
        return exchange.outcome(time.monotonic() - started)

    async def _follow(
        self,
        ex: _Exchange,
        shell: zmq.asyncio.Socket,
        iopub: zmq.asyncio.Socket,
        watchdog: Callable[[], Awaitable[str | None]] | None,
    ) -> None:
        """Read the kernel's answer to `ex` until it is whole, interrupting it on the deadline or the
        watchdog's word, and giving up (stuck) when an interrupt is not obeyed within the grace period."""
        poller = zmq.asyncio.Poller()
        poller.register(shell, zmq.POLLIN)
        poller.register(iopub, zmq.POLLIN)
        while True:
            now = time.monotonic()
            if ex.answered(now):
                return
            if self.proc is None or self.proc.returncode is not None:
                raise KernelDied(ex.out)
            if ex.interrupted_at is None and now >= ex.deadline:
                ex.interrupted_at, ex.stop_reason = now, "timeout"
                await self.interrupt()
            if ex.interrupted_at is not None and now - ex.interrupted_at > self.limits.interrupt_grace_s:
                ex.stuck = True
                return
            if watchdog is not None and ex.interrupted_at is None and now - ex.last_watch > 0.25:
                ex.last_watch = now
                reason = await watchdog()
                if reason:
                    ex.interrupted_at, ex.stop_reason = now, reason
                    await self.interrupt()
            wait = 0.1 if ex.interrupted_at is not None else min(0.1, max(0.0, ex.deadline - now))
            events = dict(await poller.poll(int(wait * 1000) + 1))
            # (The sockets as they are now: a kill meanwhile has closed them and let go of them.)
            if self.iopub is not None and self.iopub in events:
                await self._drain_iopub(ex, self.iopub)
            if self.shell is not None and self.shell in events:
                await self._drain_shell(ex, self.shell)

    async def _drain_iopub(self, ex: _Exchange, iopub: zmq.asyncio.Socket) -> None:
        """The outputs waiting on iopub (a bounded number per round), those of `ex`'s request kept."""
        for _ in range(1000):
            try:
                frames = await iopub.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            m = self._recv(frames)
            if m is None or m.get("parent_header", {}).get("msg_id") != ex.msg_id:
                continue
            if m.get("msg_type") == "error":
                c = m.get("content") or {}
                ex.error = (str(c.get("ename", "")), str(c.get("evalue", "")))
            if collect_iopub(m, ex.out):
                ex.idle = True

    async def _drain_shell(self, ex: _Exchange, shell: zmq.asyncio.Socket) -> None:
        """The replies waiting on the shell socket; the one to `ex`'s request is kept."""
        for _ in range(100):
            try:
                frames = await shell.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            m = self._recv(frames)
            if m is not None and m.get("parent_header", {}).get("msg_id") == ex.msg_id:
                ex.reply = m
                ex.reply_at = time.monotonic()


@dataclass
class _Exchange:
    """One execute request as it is followed: what came back so far, and whether it was stopped."""

    msg_id: str
    out: OutputCollector
    last_watch: float  # when the watchdog was last asked (the start, at first)
    deadline: float
    reply: dict[str, Any] | None = None
    reply_at: float | None = None
    idle: bool = False  # iopub's "idle" for the request came
    error: tuple[str, str] | None = None
    interrupted_at: float | None = None
    stop_reason: str | None = None
    stuck: bool = False

    def answered(self, now: float) -> bool:
        """The reply came, and its outputs did too ("idle"), or have had half a second to."""
        return self.reply is not None and (self.idle or (self.reply_at is not None and now - self.reply_at > 0.5))

    def outcome(self, duration_s: float) -> RawExecution:
        error = self.error
        if self.stuck:
            status = "stuck"
        elif self.interrupted_at is not None:
            status = "interrupted"
        elif self.reply is not None and (self.reply.get("content") or {}).get("status") == "error":
            status = "error"
            if error is None:
                c = self.reply.get("content") or {}
                error = (str(c.get("ename", "")), str(c.get("evalue", "")))
        else:
            status = "ok"
        return RawExecution(status, self.out, error, self.stop_reason, duration_s, self.idle)


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
