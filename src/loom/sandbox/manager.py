"""Sessions by key, a pool of started kernels, idle expiry: the `SandboxProvider` the run engine uses.

A session is a kernel (variables survive between executions) plus its /mnt/data volume. The pool holds
kernels already started, each with an empty volume of its own, so a new key's first execution costs no
start-up. A session idle for `sandbox_idle_timeout_s` is closed; so is one whose key is closed
(thread deletion). At most `sandbox_max_sessions` live at once: past that the least recently used idle
session is closed to make room (a busy one never is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import zmq.asyncio

from loom.config import Settings
from loom.sandbox import host
from loom.sandbox.cgroups import CgroupSupport
from loom.sandbox.kernel import KernelDied, KernelProcess, RawExecution
from loom.sandbox.launcher import Launcher, SandboxEnv
from loom.sandbox.types import (
    DATA_DIR,
    ExecutionResult,
    SandboxFile,
    SandboxLimits,
    SandboxUnavailable,
    default_sandbox_dir,
)
from loom.sandbox.volumes import DataVolume, unmount_all_under

log = logging.getLogger("loom.sandbox")

UNSAFE_BANNER = (
    "LOOM_SANDBOX=unsafe-local: code-interpreter code runs WITHOUT ANY ISOLATION, as this server's user, "
    "with its files and network. For development only."
)


UID_BLOCK = 1024
UID_BLOCKS = 4096


def _fmt_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB"


class _Slot:
    """A started kernel and its volume, not yet given to a key (the pool), or a session's."""

    def __init__(self, kernel: KernelProcess, volume: DataVolume, uid_slot: int) -> None:
        self.kernel = kernel
        self.volume = volume
        self.uid_slot = uid_slot


class BwrapSession:
    """One key's session. Implements the `Sandbox` protocol."""

    def __init__(self, manager: SandboxManager, key: str, slot: _Slot) -> None:
        self._manager = manager
        self._key = key
        self._slot = slot
        self._lock = asyncio.Lock()
        self._closed = False
        self._restart_task: asyncio.Task[KernelProcess] | None = None
        self._restart_note: str | None = None
        self.last_used = time.monotonic()
        self.busy = False

    @property
    def key(self) -> str:
        return self._key

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def kernel(self) -> KernelProcess:
        return self._slot.kernel

    @property
    def volume(self) -> DataVolume:
        return self._slot.volume

    def _touch(self) -> None:
        self.last_used = time.monotonic()

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxUnavailable(f"The sandbox session {self._key!r} is closed.", code="sandbox_closed")

    # ------------------------------------------------------------------------------------- execution

    def _begin_restart(self, why: str | None) -> None:
        """Restart the kernel in the background; `why` is told on the next execution (None: already told)."""
        if self._closed:
            return
        old = self._slot.kernel
        self._restart_note = why
        self._restart_task = asyncio.create_task(self._manager._restart_kernel(old, self._slot.volume))

    async def _ready_kernel(self) -> tuple[KernelProcess, str | None]:
        """The session's kernel, restarted first if it died since the last execution."""
        note = None
        if self._restart_task is None and not self._slot.kernel.alive:
            self._begin_restart("The kernel had stopped since the last execution")
        if self._restart_task is not None:
            task, self._restart_task = self._restart_task, None
            note, self._restart_note = self._restart_note, None
            self._slot.kernel = await task
        return self._slot.kernel, note

    async def execute(self, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        self._check_open()
        limits = self._manager.limits
        timeout = limits.timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            self._check_open()
            self.busy = True
            self._touch()
            try:
                kernel, note = await self._ready_kernel()
                if note:
                    note = f"[{note}; it was restarted and earlier variables are gone.]"
                watchdog = self._disk_watchdog() if self._slot.volume.kind == "dir" else None
                try:
                    raw = await kernel.execute(code, timeout_s=timeout, watchdog=watchdog)
                except KernelDied as died:
                    if self._closed:
                        notice = "[The sandbox session was closed during this execution.]"
                        return ExecutionResult(status="crashed", outputs=died.collected.finish(notice), notice=notice)
                    return self._crashed(kernel, died, note)
                if raw.status != "stuck":  # (a stuck kernel is restarted, and its processes with it)
                    # What the code left running is ended here, from the host: all of it when the
                    # execution was stopped, or when more are left than a pool of workers would need;
                    # else what left the kernel's process group (background processes).
                    await kernel.end_strays(force=raw.status == "interrupted")
                return self._result(raw, timeout, note)
            finally:
                self.busy = False
                self._touch()

    def _disk_watchdog(self) -> Callable[[], Awaitable[str | None]]:
        volume = self._slot.volume

        async def check() -> str | None:
            used = await asyncio.to_thread(volume.usage)
            if used > volume.disk_bytes:
                return f"{DATA_DIR} is over its limit ({_fmt_bytes(used)} used of {_fmt_bytes(volume.disk_bytes)})"
            return None

        return check

    def _crashed(self, kernel: KernelProcess, died: KernelDied, note: str | None) -> ExecutionResult:
        limits = self._manager.limits
        if kernel.died_of_oom():
            why = f"The kernel ran out of memory (limit {_fmt_bytes(limits.memory_bytes)}) and was killed"
        else:
            why = "The kernel died during this execution"
        self._begin_restart(None)
        notice = f"[{why}; it is being restarted, and variables from earlier executions are gone.]"
        if note:
            notice = note + "\n" + notice
        outputs = died.collected.finish(notice)
        return ExecutionResult(
            status="crashed",
            outputs=outputs,
            kernel_restarted=True,
            truncated=died.collected.truncated,
            notice=notice,
            sandboxed=kernel.spec.sandboxed,
        )

    def _result(self, raw: RawExecution, timeout: float, note: str | None) -> ExecutionResult:
        notices = [note] if note else []
        restarted = False
        if raw.status in ("interrupted", "stuck"):
            if raw.stop_reason == "timeout":
                what = f"Execution timed out after {timeout:g} s"
            else:
                what = f"Execution stopped: {raw.stop_reason}"
            if raw.status == "stuck":
                restarted = True
                self._begin_restart(None)
                notices.append(
                    f"[{what}. The kernel did not respond to the interrupt, so it was restarted: "
                    "variables from earlier executions are gone.]"
                )
            else:
                notices.append(f"[{what} and was interrupted; the kernel and its variables are kept.]")
        notice = "\n".join(notices) or None
        outputs = raw.collected.finish(notice)
        status = "timeout" if raw.status in ("interrupted", "stuck") else raw.status
        error_name, error_value = raw.error if raw.error and status == "error" else (None, None)
        return ExecutionResult(
            status=status,  # type: ignore[arg-type]
            outputs=outputs,
            error_name=error_name,
            error_value=error_value,
            timed_out=raw.stop_reason == "timeout",
            kernel_restarted=restarted or note is not None,
            truncated=raw.collected.truncated,
            duration_s=raw.duration_s,
            notice=notice,
            sandboxed=self._slot.kernel.spec.sandboxed,
        )

    # ----------------------------------------------------------------------------------------- files

    async def put_file(self, name: str, data: bytes) -> str:
        self._check_open()
        self._touch()
        return await asyncio.to_thread(self._slot.volume.put, name, data)

    async def read_file(self, path: str) -> bytes:
        self._check_open()
        self._touch()
        return await asyncio.to_thread(self._slot.volume.read, path, self._manager.limits.max_read_bytes)

    async def list_files(self) -> list[SandboxFile]:
        self._check_open()
        self._touch()
        return await asyncio.to_thread(self._slot.volume.list)

    async def export_file(self, path: str, dest: Path, max_bytes: int) -> int:
        self._check_open()
        self._touch()
        return await asyncio.to_thread(self._slot.volume.export, path, dest, max_bytes)

    async def close(self) -> None:
        await self._manager.close_session(self._key)

    async def _shutdown(self) -> None:
        self._closed = True
        if self._restart_task is not None:
            task, self._restart_task = self._restart_task, None
            with contextlib.suppress(BaseException):
                self._slot.kernel = await task
        await self._manager._discard(self._slot)


class SandboxManager:
    """Owns every sandbox of this server process. Implements `SandboxProvider`."""

    _instances = 0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = SandboxLimits.from_settings(settings)
        self.unsafe_local = settings.sandbox == "unsafe-local"
        if settings.sandbox not in ("bwrap", "unsafe-local"):
            raise SandboxUnavailable(f"Unknown LOOM_SANDBOX={settings.sandbox!r} (use 'bwrap' or 'unsafe-local').")
        self.root = default_sandbox_dir(settings).absolute()
        self.pool_size = max(0, settings.sandbox_pool_size)
        self.max_sessions = max(1, settings.sandbox_max_sessions)
        self.idle_timeout_s = settings.sandbox_idle_timeout_s
        self._sessions: dict[str, BwrapSession] = {}
        self._pool: list[_Slot] = []
        self._pool_waiters = 0
        self._filling: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._free_uid_slots: list[int] = []
        self._ctx: zmq.asyncio.Context | None = None
        self._launcher: Launcher | None = None
        self._cgroups = CgroupSupport()
        self._loop_volumes = False
        self._reaper: asyncio.Task[None] | None = None
        self._runtime_root: Path | None = None
        self._started = False
        self._closing = False
        self._pool_changed = asyncio.Event()
        self._volume_counter = 0
        self._uid_block = 0
        # Names this manager's cgroups, volumes and runtime folder: several servers may share the cgroup
        # tree, /tmp or a data dir (containers on one host), each in a pid namespace of its own.
        self.instance = secrets.token_hex(6)

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def cgroups(self) -> CgroupSupport:
        return self._cgroups

    @property
    def volume_kind(self) -> str:
        return "loop" if self._loop_volumes else "dir"

    async def start(self) -> None:
        """Check the setup, prepare the host and start the first pooled kernel; SandboxUnavailable if impossible."""
        if self._started:
            return
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        env = SandboxEnv.locate(self.settings.sandbox_env)
        if self.unsafe_local:
            log.warning(UNSAFE_BANNER)
        env = await asyncio.to_thread(self._prepare_host, env)
        self._launcher = Launcher(
            env=env,
            runtime_root=self._runtime_root or self.root,
            limits=self.limits,
            cgroups=self._cgroups,
            unsafe_local=self.unsafe_local,
            instance=self.instance,
        )
        self._ctx = zmq.asyncio.Context()
        slots = self.max_sessions + self.pool_size + 2
        if slots > UID_BLOCK:
            raise SandboxUnavailable(f"sandbox_max_sessions + sandbox_pool_size must stay under {UID_BLOCK - 2}.")
        self._free_uid_slots = list(range(slots))
        # A block of uids of its own, so that two managers (processes) never hand out the same uid.
        SandboxManager._instances += 1
        self._uid_block = (os.getpid() * 16 + SandboxManager._instances) % UID_BLOCKS
        self._started = True
        # The first kernel is started now, so that a broken setup fails here and not on first use.
        first = await self._new_slot()
        self._pool.append(first)
        self._refill()
        self._reaper = asyncio.create_task(self._reap_idle())

    def _prepare_host(self, env: SandboxEnv) -> SandboxEnv:
        """Make this process's folders and clean what dead ones left; returns the env as bwrap reaches it."""
        runtime, dead = host.make_runtime(self.root, self.instance)
        self._runtime_root = runtime  # from now on, `aclose` removes it (also when what follows fails)
        host.fill_runtime(self.root, self.instance, runtime)
        if self.unsafe_local:
            return env
        self._cgroups, self._loop_volumes = host.probe_isolation(self.root, dead)
        if os.geteuid() != 0:
            return env
        return host.open_to_sandbox_users(runtime, env)

    async def aclose(self) -> None:
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        for task in list(self._filling):
            task.cancel()
        for task in list(self._filling):
            with contextlib.suppress(BaseException):
                await task
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s._shutdown()
        pool, self._pool = self._pool, []
        for slot in pool:
            await self._discard(slot)
        if self._runtime_root is not None and await asyncio.to_thread(unmount_all_under, self._runtime_root):
            shutil.rmtree(self._runtime_root, ignore_errors=True)
            (self.root / "instances" / f"{self.instance}.json").unlink(missing_ok=True)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._started = False

    async def __aenter__(self) -> SandboxManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------ pool

    async def _new_volume(self) -> DataVolume:
        if not self._free_uid_slots:
            raise SandboxUnavailable("No sandbox uid is free (too many sessions).")
        uid_slot = self._free_uid_slots.pop(0)
        self._volume_counter += 1
        vid = f"v-{self.instance}-{self._volume_counter}-{secrets.token_hex(3)}"
        switch = self._launcher is not None and self._launcher.switches_uid
        uid = self.settings.sandbox_uid_base + self._uid_block * UID_BLOCK + uid_slot if switch else os.getuid()
        gid = uid if switch else os.getgid()
        try:
            vol = await asyncio.to_thread(
                DataVolume.create,
                self.root / "volumes" / vid,
                (self._runtime_root or self.root) / "v" / vid,
                uid=uid,
                gid=gid,
                disk_bytes=self.limits.disk_bytes,
                loop=self._loop_volumes,
                uid_slot=uid_slot,
            )
        except BaseException:
            self._free_uid_slots.append(uid_slot)
            raise
        return vol

    async def _start_kernel(self, volume: DataVolume) -> KernelProcess:
        assert self._launcher is not None and self._ctx is not None
        spec = await asyncio.to_thread(self._launcher.prepare, volume)
        kernel = KernelProcess(spec, self._ctx, self.limits)
        await kernel.start()
        return kernel

    async def _new_slot(self) -> _Slot:
        volume = await self._new_volume()
        try:
            kernel = await self._start_kernel(volume)
        except BaseException:
            await self._destroy_volume(volume)
            raise
        return _Slot(kernel, volume, volume.uid_slot)

    async def _destroy_volume(self, volume: DataVolume) -> None:
        await asyncio.to_thread(volume.destroy)
        if volume.uid_slot >= 0:
            self._free_uid_slots.append(volume.uid_slot)

    async def _discard(self, slot: _Slot) -> None:
        await slot.kernel.kill()
        await self._destroy_volume(slot.volume)

    async def _restart_kernel(self, old: KernelProcess, volume: DataVolume) -> KernelProcess:
        await old.kill()
        return await self._start_kernel(volume)

    def _refill(self) -> None:
        if self._closing or not self._started:
            return
        want = self.pool_size + self._pool_waiters
        room = self.max_sessions + self.pool_size - len(self._sessions)
        while len(self._pool) + len(self._filling) < min(want, room):
            task = asyncio.create_task(self._fill_one())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _fill_one(self) -> None:
        try:
            slot = await self._new_slot()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not start a sandbox kernel for the pool")
            await asyncio.sleep(1.0)
            return
        finally:
            self._pool_changed.set()
        if self._closing:
            await self._discard(slot)
            return
        self._pool.append(slot)
        self._pool_changed.set()

    async def _take_slot(self) -> _Slot:
        """A started kernel from the pool (waiting for one to start if it is empty)."""
        self._pool_waiters += 1
        try:
            while True:
                while self._pool:
                    slot = self._pool.pop(0)
                    if slot.kernel.alive:
                        return slot
                    await self._discard(slot)
                self._refill()
                self._pool_changed.clear()
                if not self._filling:
                    # Nothing is starting (the last try failed): start one here, and let errors show.
                    return await self._new_slot()
                await self._pool_changed.wait()
        finally:
            self._pool_waiters -= 1
            self._refill()

    # -------------------------------------------------------------------------------------- sessions

    async def session(self, key: str) -> BwrapSession:
        if not self._started:
            raise SandboxUnavailable("The sandbox manager is not started.")
        existing = self._sessions.get(key)
        if existing is not None and not existing.closed:
            existing._touch()
            return existing
        async with self._lock:
            existing = self._sessions.get(key)
            if existing is not None and not existing.closed:
                return existing
            while len(self._sessions) >= self.max_sessions:
                idle = [s for s in self._sessions.values() if not s.busy and not s._lock.locked()]
                if not idle:
                    raise SandboxUnavailable(
                        f"All {self.max_sessions} sandbox sessions are busy; try again later.", code="sandbox_busy"
                    )
                victim = min(idle, key=lambda s: s.last_used)
                log.info("closing sandbox session %s to make room", victim.key)
                del self._sessions[victim.key]
                await victim._shutdown()
            slot = await self._take_slot()
            session = BwrapSession(self, key, slot)
            self._sessions[key] = session
            return session

    def get(self, key: str) -> BwrapSession | None:
        """The live session for `key`, if there is one (does not make one)."""
        s = self._sessions.get(key)
        return s if s is not None and not s.closed else None

    async def execute(self, key: str, code: str, *, timeout_s: float | None = None) -> ExecutionResult:
        return await (await self.session(key)).execute(code, timeout_s=timeout_s)

    async def close_session(self, key: str) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
            await session._shutdown()
        self._refill()

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    @property
    def pooled(self) -> int:
        return len(self._pool)

    async def _reap_idle(self) -> None:
        interval = max(0.05, min(30.0, self.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            await self.reap_idle()

    async def reap_idle(self) -> int:
        """Close the sessions idle for longer than the idle timeout; returns how many."""
        now = time.monotonic()
        stale = [
            s
            for s in self._sessions.values()
            if not s.busy and not s._lock.locked() and now - s.last_used > self.idle_timeout_s
        ]
        for s in stale:
            if self._sessions.get(s.key) is s:
                del self._sessions[s.key]
                log.info("closing idle sandbox session %s", s.key)
                await s._shutdown()
        if stale:
            self._refill()
        return len(stale)
