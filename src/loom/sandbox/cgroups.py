"""Memory, process and CPU limits through cgroups (v1 `memory` + `pids` + `cpu`, or v2 with those controllers).

One cgroup per kernel process, below the server's own cgroup, in a `loom-sandbox` folder. The launcher
moves itself in (`echo $$ > cgroup.procs`) while still root, so everything the sandbox ever starts is
inside from its first instruction. When the machine allows none of this, `CgroupSupport.probe()` says
so and the launcher falls back to rlimits (and no CPU limit).

Several servers may share that folder (containers sharing the host's cgroup tree, where the pids
controller is at the root): a group is named `k-<instance>-...`, `<instance>` being random per manager,
and a server only ever removes its own groups, or those of an instance it proved dead (manager.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GROUP_DIR = "loom-sandbox"


def _mounts() -> list[tuple[str, str, str, str]]:
    """(mount point, root inside the hierarchy, fs type, super options) of every cgroup mount."""
    out: list[tuple[str, str, str, str]] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        pre, _, post = line.partition(" - ")
        parts, post_parts = pre.split(), post.split()
        if len(parts) < 5 or len(post_parts) < 3:
            continue
        fstype = post_parts[0]
        if fstype in ("cgroup", "cgroup2"):
            out.append((parts[4].replace("\\040", " "), parts[3], fstype, post_parts[2]))
    return out


def _own_paths() -> dict[str, str]:
    """controller → this process's cgroup path in it ("" key: the v2 unified path)."""
    out: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _hid, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _join(mount_point: str, mount_root: str, path: str) -> Path:
    rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
    return Path(mount_point) / rel if rel != "." else Path(mount_point)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class KernelCgroup:
    """The cgroup(s) of one kernel process."""

    dirs: list[Path]
    version: str
    memory_dir: Path | None
    cpu_dir: Path | None = None

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in f.read_text().split())
        return found

    def oom_kills(self) -> int:
        if self.memory_dir is None:
            return 0
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            for line in (self.memory_dir / name).read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        except (OSError, ValueError):
            pass
        return 0

    def memory_usage(self) -> int | None:
        if self.memory_dir is None:
            return None
        name = "memory.usage_in_bytes" if self.version == "v1" else "memory.current"
        try:
            return int((self.memory_dir / name).read_text())
        except (OSError, ValueError):
            return None

    def contains(self, pid: int) -> bool:
        """Whether `pid` is in this group (by its /proc/<pid>/cgroup: the group's own name is unique)."""
        name = self.dirs[0].name if self.dirs else None
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        return name is not None and any(line.rsplit("/", 1)[-1] == name for line in lines)

    def kill_all(self) -> None:
        """SIGKILL every member, each through a pidfd checked to still be a member once opened."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    if self.contains(pid):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill whatever is left inside and remove the cgroup(s) (best effort)."""
        self.kill_all()
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@dataclass
class CgroupSupport:
    version: str | None = None  # "v1", "v2" or None
    memory_parent: Path | None = None
    pids_parent: Path | None = None
    cpu_parent: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def memory(self) -> bool:
        return self.memory_parent is not None

    @property
    def pids(self) -> bool:
        return self.pids_parent is not None

    @property
    def cpu(self) -> bool:
        return self.cpu_parent is not None

    def describe(self) -> str:
        if self.version is None:
            return "no usable cgroups (" + "; ".join(self.problems or ["none found"]) + ")"
        got = [n for n, ok in (("memory", self.memory), ("pids", self.pids), ("cpu", self.cpu)) if ok]
        return f"cgroup {self.version}: " + (", ".join(got) or "no controllers")

    @classmethod
    def probe(cls) -> CgroupSupport:
        """Find, and test by creating one, a place where this process may make limited cgroups."""
        support = cls()
        if os.geteuid() != 0:
            support.problems.append("not root")
            return support
        mounts, own = _mounts(), _own_paths()
        v1: dict[str, Path] = {}
        for mount_point, root, fstype, opts in mounts:
            if fstype != "cgroup":
                continue
            for controller in ("memory", "pids", "cpu"):
                if controller in opts.split(",") and controller in own:
                    v1[controller] = _join(mount_point, root, own[controller]) / GROUP_DIR
        for controller, parent in v1.items():
            try:
                parent.mkdir(exist_ok=True)
                probe = parent / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                limit_file, value = {
                    "memory": ("memory.limit_in_bytes", "67108864"),
                    "pids": ("pids.max", "16"),
                    "cpu": ("cpu.cfs_quota_us", "50000"),
                }[controller]
                _write(probe / limit_file, value)
                probe.rmdir()
            except OSError as e:
                support.problems.append(f"v1 {controller}: {e}")
                continue
            if controller == "cpu":  # a limit more, never a reason to use v1
                support.cpu_parent = parent
                continue
            support.version = "v1"
            if controller == "memory":
                support.memory_parent = parent
            else:
                support.pids_parent = parent
        if support.version is not None:
            return support
        support.cpu_parent = None
        for mount_point, root, fstype, _opts in mounts:
            if fstype != "cgroup2" or "" not in own:
                continue
            here = _join(mount_point, root, own[""])
            try:
                available = (here / "cgroup.controllers").read_text().split()
            except OSError as e:
                support.problems.append(f"v2: {e}")
                continue
            wanted = [c for c in ("memory", "pids", "cpu") if c in available]
            if not [c for c in wanted if c != "cpu"]:
                support.problems.append("v2: memory and pids controllers not delegated here")
                continue
            parent = here / GROUP_DIR
            try:
                parent.mkdir(exist_ok=True)
                try:
                    _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
                except OSError:
                    if "cpu" not in wanted:
                        raise
                    wanted.remove("cpu")  # no CPU limit, rather than no cgroups
                    _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            except OSError as e:
                support.problems.append(f"v2: {e}")
                continue
            support.version = "v2"
            support.memory_parent = parent if "memory" in wanted else None
            support.pids_parent = parent if "pids" in wanted else None
            support.cpu_parent = parent if "cpu" in wanted else None
            break
        return support

    def create(self, name: str, *, memory_bytes: int, max_pids: int, cpus: float = 0.0) -> KernelCgroup | None:
        """The kernel's group(s); `cpus` > 0 caps its CPU time at that many cores (where `cpu` is here)."""
        if self.version is None:
            return None
        dirs: list[Path] = []
        memory_dir: Path | None = None
        cpu_dir: Path | None = None
        period = 100_000
        quota = max(1000, int(cpus * period)) if cpus > 0 else None
        try:
            if self.version == "v1":
                if self.memory_parent is not None:
                    memory_dir = self.memory_parent / name
                    memory_dir.mkdir()
                    dirs.append(memory_dir)
                    _write(memory_dir / "memory.limit_in_bytes", str(memory_bytes))
                    with contextlib.suppress(OSError):  # only where swap accounting is on
                        _write(memory_dir / "memory.memsw.limit_in_bytes", str(memory_bytes))
                if self.pids_parent is not None:
                    pids_dir = self.pids_parent / name
                    pids_dir.mkdir()
                    dirs.append(pids_dir)
                    _write(pids_dir / "pids.max", str(max_pids))
                if self.cpu_parent is not None and quota is not None:
                    cpu_dir = self.cpu_parent / name
                    cpu_dir.mkdir()
                    dirs.append(cpu_dir)
                    _write(cpu_dir / "cpu.cfs_period_us", str(period))
                    _write(cpu_dir / "cpu.cfs_quota_us", str(quota))
            else:
                parent = self.memory_parent or self.pids_parent
                assert parent is not None
                d = parent / name
                d.mkdir()
                dirs.append(d)
                if self.memory_parent is not None:
                    memory_dir = d
                    _write(d / "memory.max", str(memory_bytes))
                    with contextlib.suppress(OSError):
                        _write(d / "memory.swap.max", "0")
                if self.pids_parent is not None:
                    _write(d / "pids.max", str(max_pids))
                if self.cpu_parent is not None and quota is not None:
                    cpu_dir = d
                    _write(d / "cpu.max", f"{quota} {period}")
        except OSError:
            KernelCgroup(dirs, self.version, memory_dir, cpu_dir).remove()
            raise
        return KernelCgroup(dirs, self.version, memory_dir, cpu_dir)

    def cleanup_stale(self, is_stale: Callable[[str], bool]) -> None:
        """Remove the groups whose name `is_stale` accepts (it must only accept groups it proved
        to be its own instance's or a dead instance's), killing what is still inside."""
        parents = {p for p in (self.memory_parent, self.pids_parent, self.cpu_parent) if p is not None}
        for parent in parents:
            try:
                children = [c for c in parent.iterdir() if c.is_dir() and is_stale(c.name)]
            except OSError:
                continue
            for child in children:
                KernelCgroup([child], self.version or "v1", None).remove()
