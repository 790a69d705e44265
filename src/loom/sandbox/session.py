"""One key's code-interpreter session: a kernel (variables survive between executions) and its /mnt/data.

The session runs executions one at a time, restarts its kernel when it died, was stuck or ran out of
memory (telling the next result so), and ends what the code left running after each execution (from
the host, through the kernel's `ProcessScope`: only its own processes). Its kernel and volume come from
the manager's `KernelPool`, and go back to it when the session is shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loom.sandbox.kernel import KernelDied, KernelProcess, RawExecution
from loom.sandbox.pool import KernelPool, Slot
from loom.sandbox.types import DATA_DIR, ExecutionResult, SandboxFile, SandboxLimits, SandboxUnavailable
from loom.sandbox.volumes import DataVolume


def _fmt_bytes(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MB"


class BwrapSession:
    """One key's session. Implements the `Sandbox` protocol."""

    def __init__(
        self,
        key: str,
        slot: Slot,
        *,
        pool: KernelPool,
        limits: SandboxLimits,
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        self._key = key
        self._slot = slot
        self._pool = pool
        self._limits = limits
        self._on_close = on_close
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

    @property
    def idle(self) -> bool:
        """Neither executing nor waiting to (so it may be closed to make room, or when it expires)."""
        return not self.busy and not self._lock.locked()

    def touch(self) -> None:
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
        self._restart_task = asyncio.create_task(self._pool.restart_kernel(old, self._slot.volume))

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

    async def execute(
        self, code: str, *, timeout_s: float | None = None, on_text: Callable[[str], None] | None = None
    ) -> ExecutionResult:
        self._check_open()
        limits = self._limits
        timeout = limits.timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            self._check_open()
            self.busy = True
            self.touch()
            try:
                kernel, note = await self._ready_kernel()
                if note:
                    note = f"[{note}; it was restarted and earlier variables are gone.]"
                watchdog = self._disk_watchdog() if self._slot.volume.kind == "dir" else None
                try:
                    raw = await kernel.execute(code, timeout_s=timeout, watchdog=watchdog, on_text=on_text)
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
                self.touch()

    def _disk_watchdog(self) -> Callable[[], Awaitable[str | None]]:
        volume = self._slot.volume

        async def check() -> str | None:
            used = await asyncio.to_thread(volume.usage)
            if used > volume.disk_bytes:
                return f"{DATA_DIR} is over its limit ({_fmt_bytes(used)} used of {_fmt_bytes(volume.disk_bytes)})"
            return None

        return check

    def _crashed(self, kernel: KernelProcess, died: KernelDied, note: str | None) -> ExecutionResult:
        limits = self._limits
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

    async def put_file(self, name: str, data: bytes | Path) -> str:
        self._check_open()
        self.touch()
        return await asyncio.to_thread(self._slot.volume.put, name, data)

    async def read_file(self, path: str) -> bytes:
        self._check_open()
        self.touch()
        return await asyncio.to_thread(self._slot.volume.read, path, self._limits.max_read_bytes)

    async def list_files(self) -> list[SandboxFile]:
        self._check_open()
        self.touch()
        return await asyncio.to_thread(self._slot.volume.list)

    async def export_file(self, path: str, dest: Path, max_bytes: int) -> int:
        self._check_open()
        self.touch()
        return await asyncio.to_thread(self._slot.volume.export, path, dest, max_bytes)

    async def close(self) -> None:
        await self._on_close()

    async def shutdown(self) -> None:
        """End the session (its kernel and volume) for its owner, who has already let go of it."""
        self._closed = True
        if self._restart_task is not None:
            task, self._restart_task = self._restart_task, None
            with contextlib.suppress(BaseException):
                self._slot.kernel = await task
        await self._pool.discard(self._slot)
