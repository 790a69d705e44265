"""Host preparation for the sandboxes of one server process: its runtime folder (what bwrap binds in),
ownership markers, and the cleanup of what provably dead servers left behind.

A marker (`owner.json` in the runtime folder and `instances/<instance>.json` under the sandbox root)
names the process that made it in terms another server can check; nothing is removed unless its
owner is proved dead (`provably_dead`)."""

from __future__ import annotations

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

OWNER_FILE = "owner.json"


def make_runtime(root: Path, instance: str) -> tuple[Path, set[str]]:
    """Make this process's folders (under `root` and a runtime folder) and clean what dead servers
    left; returns the runtime folder and the dead instances."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "volumes").mkdir(exist_ok=True)
    (root / "instances").mkdir(exist_ok=True)
    parent = runtime_parent()
    dead = cleanup_stale(root, parent)
    # The runtime root holds what bwrap (running as the sandbox's uid) binds in: kernels' socket
    # folders, the sessions' /mnt/data folders or mount points, and the boot script. Short paths:
    # sun_path is limited to 108 bytes. Searchable (not readable) by other users.
    runtime = parent / f"loom-sbx-{os.getpid()}-{instance}"
    runtime.mkdir(mode=0o700)
    return runtime, dead


def fill_runtime(root: Path, instance: str, runtime: Path) -> None:
    """Write the ownership markers and the boot script into a new runtime folder."""
    owner = json.dumps({"instance": instance, **owner_record()})
    (runtime / OWNER_FILE).write_text(owner)
    (root / "instances" / f"{instance}.json").write_text(owner)
    (runtime / "v").mkdir()
    shutil.copyfile(boot_module.__file__, runtime / "boot.py")
    os.chmod(runtime / "boot.py", 0o644)


def probe_isolation(root: Path, dead: set[str]) -> tuple[CgroupSupport, bool]:
    """What the host offers (cgroups, loop volumes), after removing dead servers' cgroups and markers."""
    cgroups = CgroupSupport.probe()
    loop_volumes = loop_volumes_possible()[0]
    if cgroups.version is not None and dead:
        cgroups.cleanup_stale(lambda name: instance_of(name) in dead)
    for instance in dead:
        (root / "instances" / f"{instance}.json").unlink(missing_ok=True)
    return cgroups, loop_volumes


def open_to_sandbox_users(runtime: Path, env: SandboxEnv) -> SandboxEnv:
    """As root: let the sandbox's uid reach the runtime folder and the environment; returns the env as
    bwrap reaches it (a read-only bind mount of it when its own folder cannot be entered)."""
    for d in (runtime, runtime / "v"):
        os.chmod(d, 0o711)
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


def cleanup_stale(root: Path, parent: Path) -> set[str]:
    """Remove the runtime folders and volumes of instances proved dead (`provably_dead`); returns
    those instances. What another server made, or what cannot be proved dead, is never touched."""
    owners: dict[str, tuple[dict[str, object], Path | None]] = {}
    for marker in (root / "instances").glob("*.json"):
        record = read_owner(marker)
        if record is not None:
            owners[str(record["instance"])] = (record, None)
    for run_dir in parent.glob("loom-sbx-*-*"):
        record = read_owner(run_dir / OWNER_FILE)
        if record is not None and run_dir.name.endswith("-" + str(record["instance"])):
            owners[str(record["instance"])] = (record, run_dir)
    dead = {instance for instance, (record, _) in owners.items() if provably_dead(record)}
    for instance in dead:
        folder = owners[instance][1]
        if folder is not None and unmount_all_under(folder):
            shutil.rmtree(folder, ignore_errors=True)
    for vol_dir in (root / "volumes").iterdir():
        if instance_of(vol_dir.name) in dead:
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


def start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def owner_record() -> dict[str, object]:
    """Who this server process is, in terms another one can check: pid, start time, pid namespace, boot."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    pid = os.getpid()
    return {"pid": pid, "start": start_time(pid), "pidns": pidns, "boot": boot_id(), "host": os.uname().nodename}


def read_owner(path: Path) -> dict[str, object] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("instance"), str):
        return None
    if not record["instance"].isalnum():
        return None
    return record


def provably_dead(record: dict[str, object]) -> bool:
    """Whether the server process a marker names is certainly gone: this machine has rebooted since, or
    it ran in this very pid namespace (since this boot) and its pid is free or now another process's.
    A process of another pid namespace cannot be checked from here: never dead."""
    me = owner_record()
    if not record.get("boot") or not me["boot"] or not me["pidns"]:
        return False
    if record.get("host") == me["host"] and record.get("boot") != me["boot"]:
        return True
    if record.get("boot") != me["boot"] or record.get("pidns") != me["pidns"]:
        return False
    pid = record.get("pid")
    return isinstance(pid, int) and pid > 0 and start_time(pid) != record.get("start")


def instance_of(name: str) -> str | None:
    """The instance in a cgroup or volume name (`k-<instance>-<n>-<hex>`, `v-<instance>-<n>-<hex>`)."""
    parts = name.split("-")
    if len(parts) != 4 or parts[0] not in ("k", "v"):
        return None
    return parts[1]
