"""Sessions by key, a pool of started kernels, idle expiry: the `SandboxProvider` the run engine uses.

A session is a kernel (variables survive between executions) plus its /mnt/data volume. The pool holds
kernels already started, each with an empty volume of its own, so a new key's first execution costs no
start-up. A session idle for `sandbox_idle_timeout_s` is closed; so is one whose key is closed
(thread deletion). At most `sandbox_max_sessions` live at once: past that the least recently used idle
session is closed to make room (a busy one never is).

The parts: `SandboxHost` (host.py) prepares this server's folders and uid block and cleans what dead
servers left; `KernelPool` (pool.py) makes and unmakes kernels with their volumes; `BwrapSession`
(session.py) is one key's session. This module ties them together and owns the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from pathlib import Path

import zmq.asyncio

from loom.config import Settings
from loom.sandbox.cgroups import CgroupSupport
from loom.sandbox.host import UID_BLOCK, SandboxHost
from loom.sandbox.launcher import Launcher, SandboxEnv
from loom.sandbox.pool import KernelPool
from loom.sandbox.session import BwrapSession
from loom.sandbox.types import ExecutionResult, SandboxLimits, SandboxUnavailable, default_sandbox_dir
from loom.supervisor import Supervisor

log = logging.getLogger("loom.sandbox")

UNSAFE_BANNER = (
    "LOOM_SANDBOX=unsafe-local: code-interpreter code runs WITHOUT ANY ISOLATION, as this server's user, "
    "with its files and network. For development only."
)


class SandboxManager:
    """Owns every sandbox of this server process. Implements `SandboxProvider`."""

    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        self.settings = settings
        self._supervisor = supervisor or Supervisor()  # runs the idle reaper
        self.limits = SandboxLimits.from_settings(settings)
        self.unsafe_local = settings.sandbox == "unsafe-local"
        if settings.sandbox not in ("bwrap", "unsafe-local"):
            raise SandboxUnavailable(f"Unknown LOOM_SANDBOX={settings.sandbox!r} (use 'bwrap' or 'unsafe-local').")
        self.root = default_sandbox_dir(settings).absolute()
        self.pool_size = max(0, settings.sandbox_pool_size)
        self.max_sessions = max(1, settings.sandbox_max_sessions)
        self.idle_timeout_s = settings.sandbox_idle_timeout_s
        self._sessions: dict[str, BwrapSession] = {}
        self._lock = asyncio.Lock()
        self._ctx: zmq.asyncio.Context | None = None
        self._pool: KernelPool | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        # Names this manager's cgroups, volumes and runtime folder: several servers may share the cgroup
        # tree, /tmp or a data dir (containers on one host), each in a pid namespace of its own.
        self.instance = secrets.token_hex(6)
        self.host = SandboxHost(
            self.root, self.instance, uid_base=settings.sandbox_uid_base, unsafe_local=self.unsafe_local
        )

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def cgroups(self) -> CgroupSupport:
        return self.host.cgroups

    @property
    def volume_kind(self) -> str:
        return "loop" if self.host.loop_volumes else "dir"

    @property
    def runtime_root(self) -> Path | None:
        """This instance's runtime folder (kernels' sockets, mount points, the boot script) once started."""
        return self.host.runtime_root

    @property
    def pool(self) -> KernelPool | None:
        """The kernel pool, once started."""
        return self._pool

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
        env = await asyncio.to_thread(self.host.prepare, env)
        launcher = Launcher(
            env=env,
            runtime_root=self.host.runtime_root or self.root,
            limits=self.limits,
            cgroups=self.host.cgroups,
            unsafe_local=self.unsafe_local,
            instance=self.instance,
        )
        self._ctx = zmq.asyncio.Context()
        slots = self.max_sessions + self.pool_size + 2
        if slots > UID_BLOCK:
            raise SandboxUnavailable(f"sandbox_max_sessions + sandbox_pool_size must stay under {UID_BLOCK - 2}.")
        self._pool = KernelPool(
            host=self.host,
            launcher=launcher,
            context=self._ctx,
            limits=self.limits,
            size=self.pool_size,
            uid_slots=slots,
            room=lambda: self.max_sessions + self.pool_size - len(self._sessions),
        )
        self._started = True
        # The first kernel is started now, so that a broken setup fails here and not on first use.
        await self._pool.prime()
        self._reaper = self._supervisor.start("loom-sandbox-reaper", self._reap_idle)

    async def aclose(self) -> None:
        self._closing = True
        pool = self._pool
        if pool is not None:
            pool.close()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        if pool is not None:
            await pool.cancel_fills()
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s.shutdown()
        if pool is not None:
            await pool.discard_ready()
        await self.host.release()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        self._started = False

    async def __aenter__(self) -> SandboxManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _refill(self) -> None:
        if self._closing or not self._started or self._pool is None:
            return
        self._pool.refill()

    # -------------------------------------------------------------------------------------- sessions

    async def session(self, key: str) -> BwrapSession:
        if not self._started or self._pool is None:
            raise SandboxUnavailable("The sandbox manager is not started.")
        existing = self._sessions.get(key)
        if existing is not None and not existing.closed:
            existing.touch()
            return existing
        async with self._lock:
            existing = self._sessions.get(key)
            if existing is not None and not existing.closed:
                return existing
            while len(self._sessions) >= self.max_sessions:
                idle = [s for s in self._sessions.values() if s.idle]
                if not idle:
                    raise SandboxUnavailable(
                        f"All {self.max_sessions} sandbox sessions are busy; try again later.", code="sandbox_busy"
                    )
                victim = min(idle, key=lambda s: s.last_used)
                log.info("closing sandbox session %s to make room", victim.key)
                del self._sessions[victim.key]
                await victim.shutdown()
            slot = await self._pool.take()
            session = BwrapSession(
                key,
                slot,
                pool=self._pool,
                limits=self.limits,
                on_close=functools.partial(self.close_session, key),
            )
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
            await session.shutdown()
        self._refill()

    @property
    def live_sessions(self) -> int:
        return len(self._sessions)

    @property
    def pooled(self) -> int:
        return self._pool.pooled if self._pool is not None else 0

    async def _reap_idle(self) -> None:
        interval = max(0.05, min(30.0, self.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            await self.reap_idle()

    async def reap_idle(self) -> int:
        """Close the sessions idle for longer than the idle timeout; returns how many."""
        now = time.monotonic()
        stale = [s for s in self._sessions.values() if s.idle and now - s.last_used > self.idle_timeout_s]
        for s in stale:
            if self._sessions.get(s.key) is s:
                del self._sessions[s.key]
                log.info("closing idle sandbox session %s", s.key)
                await s.shutdown()
        if stale:
            self._refill()
        return len(stale)
