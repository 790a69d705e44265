"""A session's own processes, found and ended from the host: never a broadcast signal, never anything else.

A session's processes are, by construction, either the members of the kernel's cgroup (made by us; the
launcher joins it before anything of the sandbox runs) or, without cgroups, the process we started and
its descendants (found by walking /proc's parent links; under bubblewrap orphans are re-parented to the
sandbox's init, under `unsafe-local` to the kernel, which is made a child subreaper at boot). Each
process is signalled through a pidfd opened first and checked to still belong to the session after it
was opened, so a pid that was reused meanwhile by an unrelated process is never signalled.

`machinery` is what ran before any user code (bwrap, the sandbox's init, the kernel): never a stray.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from loom.sandbox.cgroups import KernelCgroup

#: Strays an execution may leave running (a pool of workers kept in a variable) before all are ended.
MOST_LEFT_PROCESSES = 16


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    pgrp: int
    state: str = "R"

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def proc_info(pid: int) -> ProcInfo | None:
    """Parent and process group of `pid` (in this process's pid namespace); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return ProcInfo(pid, int(fields[1]), int(fields[2]), fields[0])
    except (IndexError, ValueError):
        return None


def all_procs() -> dict[int, ProcInfo]:
    out: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = proc_info(int(entry))
            if info is not None:
                out[info.pid] = info
    return out


def descendants(root: int, procs: dict[int, ProcInfo] | None = None) -> set[int]:
    """Every descendant of `root` (not `root` itself)."""
    procs = all_procs() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in out:
            out.add(pid)
            stack.extend(children.get(pid, []))
    return out


def is_descendant(pid: int, root: int) -> bool:
    """Whether `root` is on `pid`'s chain of parents (pid itself excluded)."""
    seen = 0
    info = proc_info(pid)
    while info is not None and seen < 4096:
        if info.ppid == root:
            return True
        if info.ppid <= 1:
            return False
        info = proc_info(info.ppid)
        seen += 1
    return False


def ns_pid(pid: int) -> int | None:
    """`pid` as its own (innermost) pid namespace numbers it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class ProcessScope:
    """The processes of one kernel's sandbox: `root` is the process the server started."""

    root: int
    cgroup: KernelCgroup | None
    machinery: set[int] = field(default_factory=set)
    kernel_pid: int = 0
    kernel_pgrp: int = 0

    def belongs(self, pid: int) -> bool:
        if self.cgroup is not None:
            return self.cgroup.contains(pid)
        return pid == self.root or is_descendant(pid, self.root)

    def members(self) -> set[int]:
        if self.cgroup is not None:
            return self.cgroup.pids()
        procs = all_procs()
        return ({self.root} if self.root in procs else set()) | descendants(self.root, procs)

    def snapshot(self) -> None:
        """Record the machinery (everything running now, before any user code) and which one is the kernel."""
        procs = all_procs()
        members = self.members()
        self.machinery = set(members) | {self.root}
        # The kernel is the deepest of them: bwrap → the sandbox's init → the kernel (or the kernel alone).
        depth: dict[int, int] = {}
        for pid in members:
            d, info = 0, procs.get(pid)
            while info is not None and info.ppid in members and d < 64:
                d, info = d + 1, procs.get(info.ppid)
            depth[pid] = d
        self.kernel_pid = max(depth, key=lambda p: depth[p]) if depth else self.root
        info = procs.get(self.kernel_pid)
        self.kernel_pgrp = info.pgrp if info is not None else self.kernel_pid

    def strays(self) -> list[ProcInfo]:
        out: list[ProcInfo] = []
        for pid in self.members() - self.machinery:
            info = proc_info(pid)
            if info is not None:
                out.append(info)
        return out

    def kill(self, pid: int) -> bool:
        """SIGKILL `pid` if (once pinned by a pidfd) it still belongs to this sandbox."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            if not self.belongs(pid):
                return False
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def end_strays(self, *, force: bool, most: int = MOST_LEFT_PROCESSES, deadline_s: float = 2.0) -> list[int]:
        """End what the code left running: everything when `force` (the execution was stopped) or when
        more than `most` are left, else only what left the kernel's process group (`setsid`, a new
        session: background processes nothing in the kernel waits for). Returns, as the sandbox numbers
        them, the ended processes whose parent is the kernel (zombies it must reap)."""
        strays = self.strays()
        if not strays:
            return []
        everything = force or len(strays) > most
        reap: set[int] = set()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            targets = strays if everything else [s for s in strays if s.pgrp != self.kernel_pgrp]
            for s in targets:
                inner = ns_pid(s.pid) if s.ppid == self.kernel_pid else None
                if (s.zombie or self.kill(s.pid)) and inner is not None:
                    reap.add(inner)
            if not [s for s in targets if not s.zombie]:
                break
            time.sleep(0.01)
            strays = self.strays()
        if everything:
            # Children of the kernel that died on their own (the OOM killer, the process limit) are
            # zombies no cgroup lists any more: reaped too.
            for pid in self.kernel_children():
                info = proc_info(pid)
                inner = ns_pid(pid) if info is not None and info.zombie else None
                if inner is not None:
                    reap.add(inner)
        return sorted(reap)

    def kernel_children(self) -> set[int]:
        out: set[int] = set()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self.kernel_pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    text = Path(f"/proc/{self.kernel_pid}/task/{task}/children").read_text()
                    out.update(int(x) for x in text.split())
        return out

    def kill_all(self) -> None:
        """End every process of the sandbox, the kernel and machinery included."""
        for _ in range(50):
            live = [p for p in (proc_info(pid) for pid in self.members()) if p is not None and not p.zombie]
            if not live:
                return
            for p in live:
                self.kill(p.pid)
            time.sleep(0.01)


#: Run in the kernel after strays it started were killed: reaps exactly those (never `waitpid(-1)`).
REAP_CODE = """
def _loom_reap(pids):
    import os, time
    end = time.monotonic() + 2
    left = set(pids)
    while left and time.monotonic() < end:
        for p in list(left):
            try:
                if os.waitpid(p, os.WNOHANG)[0]:
                    left.discard(p)
            except ChildProcessError:
                left.discard(p)
        if left:
            time.sleep(0.005)
_loom_reap({pids!r})
del _loom_reap
"""
