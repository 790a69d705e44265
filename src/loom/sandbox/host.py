"""This server's footprint on the host: its folders, its block of sandbox uids, and what dead servers left.

Several Loom servers may share one host (containers), each in a pid namespace of its own, sharing the
cgroup tree, /tmp or even a data dir. Each server names what it makes (runtime folder, volumes,
cgroups) after its random instance id and writes a marker saying who it is (pid, start time, pid
namespace, boot). What another server made is only ever removed when that server is provably dead
(`_provably_dead`); anything that cannot be proved dead is left alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import loom.sandbox.boot as boot_module
from loom.sandbox.cgroups import CgroupSupport
from loom.sandbox.launcher import SandboxEnv
from loom.sandbox.types import SandboxUnavailable
from loom.sandbox.volumes import loop_volumes_possible, unmount_all_under

# Each manager hands out uids from a block of its own: `sandbox_uid_base + block * UID_BLOCK + slot`. The
# block comes from the manager's random instance id, over up to UID_BLOCKS blocks (uids stay under 2**31),
# never one that a live instance whose marker this one can see (same data dir or /tmp) holds: two servers
# on one host, each in a pid namespace of its own, never share a uid (whose code could signal or read the
# other's sandboxes).
UID_BLOCK = 1024
UID_BLOCKS = 1 << 20
_UID_LIMIT = 2**31 - 1

OWNER_FILE = "owner.json"


class SandboxHost:
    """The folders, uid block, cgroup support and volume kind of one manager (one server process).

    `prepare` makes them (cleaning what provably dead instances left); `release` removes this
    instance's runtime folder and marker again. Until `prepare` has run, nothing is made."""

    def __init__(self, root: Path, instance: str, *, uid_base: int, unsafe_local: bool) -> None:
        self.root = root
        self.instance = instance
        self.uid_base = uid_base
        self.unsafe_local = unsafe_local
        # Set by `prepare` as it goes (so that `release` removes what a failed start made).
        self.runtime_root: Path | None = None
        self.uid_block = 0
        self.cgroups = CgroupSupport()
        self.loop_volumes = False

    @property
    def volumes_dir(self) -> Path:
        """Where the sessions' volumes (folders or image files) live."""
        return self.root / "volumes"

    @property
    def mounts_dir(self) -> Path:
        """Where the sessions' /mnt/data are reached by bwrap (under the runtime root once there is one)."""
        return (self.runtime_root or self.root) / "v"

    def uid(self, slot: int) -> int:
        """The host uid of a session slot: in this instance's block, never another live instance's."""
        return self.uid_base + self.uid_block * UID_BLOCK + slot

    def _marker(self, instance: str) -> Path:
        return self.root / "instances" / f"{instance}.json"

    def prepare(self, env: SandboxEnv) -> SandboxEnv:
        """Make this process's folders and clean what dead ones left; returns the env as bwrap reaches it."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "volumes").mkdir(exist_ok=True)
        (self.root / "instances").mkdir(exist_ok=True)
        parent = runtime_parent()
        dead = self._cleanup_stale(parent)
        # Chosen before this instance's marker is written, and recorded in it, for those starting later.
        blocks = max(1, min(UID_BLOCKS, (_UID_LIMIT - self.uid_base) // UID_BLOCK))
        self.uid_block = pick_uid_block(self.instance, self._held_uid_blocks(parent, dead), blocks)
        # The runtime root holds what bwrap (running as the sandbox's uid) binds in: kernels' socket
        # folders, the sessions' /mnt/data folders or mount points, and the boot script. Short paths:
        # sun_path is limited to 108 bytes. Searchable (not readable) by other users.
        runtime = parent / f"loom-sbx-{os.getpid()}-{self.instance}"
        runtime.mkdir(mode=0o700)
        self.runtime_root = runtime
        owner = json.dumps({"instance": self.instance, "uid_block": self.uid_block, **_owner()})
        (runtime / OWNER_FILE).write_text(owner)
        self._marker(self.instance).write_text(owner)
        (runtime / "v").mkdir()
        shutil.copyfile(boot_module.__file__, runtime / "boot.py")
        os.chmod(runtime / "boot.py", 0o644)
        if self.unsafe_local:
            return env
        self.cgroups = CgroupSupport.probe()
        self.loop_volumes = loop_volumes_possible()[0]
        if self.cgroups.version is not None and dead:
            self.cgroups.cleanup_stale(lambda name: _instance_of(name) in dead)
        for instance in dead:
            self._marker(instance).unlink(missing_ok=True)
        if os.geteuid() != 0:
            return env
        for d in (runtime, runtime / "v"):
            os.chmod(d, 0o711)
        return self._reachable_env(env, runtime)

    def _reachable_env(self, env: SandboxEnv, runtime: Path) -> SandboxEnv:
        """The sandbox environment where the sandbox's uid can enter it (bind-mounted under the runtime
        root when its own folder is closed to other users)."""
        if untraversable(env.base_prefix) is not None:
            raise SandboxUnavailable(
                f"The sandbox's Python ({env.base_prefix}) is in a folder other users cannot enter: make "
                "the sandbox environment from a system Python (`python -m loom.sandbox.setup --python "
                "/usr/bin/python3 --force`)."
            )
        if untraversable(env.root) is not None:
            # Reachable through a read-only bind mount of our own instead.
            target = runtime / "env"
            target.mkdir()
            try:
                subprocess.run(["mount", "--bind", str(env.root), str(target)], check=True, capture_output=True)
                subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError) as e:
                raise SandboxUnavailable(
                    f"The sandbox environment {env.root} is in a folder other users cannot enter, and it "
                    f"could not be bind-mounted elsewhere ({e}): set LOOM_SANDBOX_ENV to a searchable place."
                ) from e
            return SandboxEnv(target, env.base_prefix)
        return env

    async def release(self) -> None:
        """Remove this instance's runtime folder (once nothing is mounted under it) and its marker."""
        if self.runtime_root is not None and await asyncio.to_thread(unmount_all_under, self.runtime_root):
            shutil.rmtree(self.runtime_root, ignore_errors=True)
            self._marker(self.instance).unlink(missing_ok=True)

    def _markers(self, runtime_parent: Path) -> dict[str, tuple[dict[str, object], Path | None]]:
        """The instance markers this server can see (its data dir's, and the runtime folders in /tmp)."""
        owners: dict[str, tuple[dict[str, object], Path | None]] = {}
        for marker in (self.root / "instances").glob("*.json"):
            record = _read_owner(marker)
            if record is not None:
                owners[str(record["instance"])] = (record, None)
        for run_dir in runtime_parent.glob("loom-sbx-*-*"):
            record = _read_owner(run_dir / OWNER_FILE)
            if record is not None and run_dir.name.endswith("-" + str(record["instance"])):
                owners[str(record["instance"])] = (record, run_dir)
        return owners

    def _held_uid_blocks(self, runtime_parent: Path, dead: set[str]) -> set[int]:
        """The uid blocks of the other instances not proved dead (those of another pid namespace included)."""
        held = set()
        for instance, (record, _) in self._markers(runtime_parent).items():
            block = record.get("uid_block")
            if instance != self.instance and instance not in dead and isinstance(block, int):
                held.add(block)
        return held

    def _cleanup_stale(self, runtime_parent: Path) -> set[str]:
        """Remove the runtime folders and volumes of instances proved dead (`_provably_dead`); returns
        those instances. What another server made, or what cannot be proved dead, is never touched."""
        owners = self._markers(runtime_parent)
        dead = {instance for instance, (record, _) in owners.items() if _provably_dead(record)}
        for instance in dead:
            folder = owners[instance][1]
            if folder is not None and unmount_all_under(folder):
                shutil.rmtree(folder, ignore_errors=True)
        for vol_dir in (self.root / "volumes").iterdir():
            if _instance_of(vol_dir.name) in dead:
                shutil.rmtree(vol_dir, ignore_errors=True)
        return dead


def runtime_parent() -> Path:
    """A temporary folder other users can enter (the sandbox's uid must reach what is bound in)."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/dev/shm", "/run"):
        p = Path(candidate)
        if p.is_dir() and untraversable(p) is None:
            return p
    return Path(tempfile.gettempdir())


def untraversable(path: Path) -> Path | None:
    """The first folder on the way to `path` that other users cannot enter (None: all can)."""
    p = path.absolute()
    for d in [*reversed(p.parents), p]:
        try:
            if not d.is_dir():
                continue
            if d.stat().st_mode & 0o001 == 0:
                return d
        except OSError:
            return d
    return None


def pick_uid_block(instance: str, held: set[int], blocks: int) -> int:
    """The uid block of an instance: from its random id (hex) over `blocks`, else the next one no one holds."""
    start = int(instance, 16) % blocks
    for step in range(blocks):
        block = (start + step) % blocks
        if block not in held:
            return block
    raise SandboxUnavailable("Every block of sandbox uids is held by another Loom server on this host.")


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _owner() -> dict[str, object]:
    """Who this server process is, in terms another one can check: pid, start time, pid namespace, boot."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "pidns": pidns, "boot": _boot_id(), "host": os.uname().nodename}


def _read_owner(path: Path) -> dict[str, object] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("instance"), str):
        return None
    if not record["instance"].isalnum():
        return None
    return record


def _provably_dead(record: dict[str, object]) -> bool:
    """Whether the server process a marker names is certainly gone: this machine has rebooted since, or
    it ran in this very pid namespace (since this boot) and its pid is free or now another process's.
    A process of another pid namespace cannot be checked from here: never dead."""
    me = _owner()
    if not record.get("boot") or not me["boot"] or not me["pidns"]:
        return False
    if record.get("host") == me["host"] and record.get("boot") != me["boot"]:
        return True
    if record.get("boot") != me["boot"] or record.get("pidns") != me["pidns"]:
        return False
    pid = record.get("pid")
    return isinstance(pid, int) and pid > 0 and _start_time(pid) != record.get("start")


def _instance_of(name: str) -> str | None:
    """The instance in a cgroup or volume name (`k-<instance>-<n>-<hex>`, `v-<instance>-<n>-<hex>`)."""
    parts = name.split("-")
    if len(parts) != 4 or parts[0] not in ("k", "v"):
        return None
    return parts[1]
