"""What isolation this machine gives the sandbox (`loom sandbox check`, `python -m loom.sandbox check`).

Each item is tried, not guessed: bubblewrap is run with the sandbox's own namespaces and uid, a cgroup
is made, a loop volume is made, and the environment's Python imports the packages.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loom.config import Settings
from loom.sandbox.cgroups import CgroupSupport
from loom.sandbox.launcher import SANDBOX_UID, SandboxEnv, _which
from loom.sandbox.types import SandboxUnavailable
from loom.sandbox.volumes import DataVolume, loop_volumes_possible

PACKAGES = ("ipykernel", "numpy", "pandas", "matplotlib", "scipy", "sympy", "openpyxl", "PIL")

_PROBE = r"""
import os, socket
print("uid", os.getuid())
print("ifaces", ",".join(sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])))
print("caps", [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
print("nnp", [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0])
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1); print("net", "reachable")
except OSError as e:
    print("net", "unreachable")
try:
    open("/usr/probe", "w"); print("usr", "writable")
except OSError:
    print("usr", "read-only")
"""


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass
class IsolationReport:
    mode: str
    items: list[Item] = field(default_factory=list)

    @property
    def available(self) -> bool:
        """Whether sessions can start (in "bwrap" mode: with every required isolation in place)."""
        return all(i.ok for i in self.items if i.required)

    @property
    def problems(self) -> list[str]:
        return [f"{i.name}: {i.detail}" for i in self.items if i.required and not i.ok]

    def add(self, name: str, ok: bool, detail: str, required: bool = True) -> None:
        self.items.append(Item(name, ok, detail, required))

    def format(self) -> str:
        lines = [f"sandbox mode: {self.mode}"]
        for i in self.items:
            mark = "ok " if i.ok else ("NO " if i.required else "-- ")
            lines.append(f"  [{mark}] {i.name}: {i.detail}")
        if self.mode == "unsafe-local":
            lines.append("  WARNING: unsafe-local runs code with NO isolation (development only).")
        lines.append("sandbox: " + ("available" if self.available else "UNAVAILABLE"))
        return "\n".join(lines)


def check_isolation(settings: Settings | None = None, *, try_volume: bool = True) -> IsolationReport:
    settings = settings or Settings()
    report = IsolationReport(settings.sandbox)
    is_root = os.geteuid() == 0
    report.add("server user", True, "root (each session gets a uid of its own)" if is_root else
               f"uid {os.geteuid()} (sandboxes share this uid)", required=False)  # fmt: skip
    env = _check_environment(report, settings)
    if settings.sandbox == "unsafe-local":
        report.add("isolation", False, "none: LOOM_SANDBOX=unsafe-local", required=False)
        return report
    bwrap = _which("bwrap")
    if bwrap is None:
        report.add("bubblewrap", False, "`bwrap` not found: apt-get install -y bubblewrap")
    else:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()
        report.add("bubblewrap", True, f"{bwrap} ({version})")
    setpriv = _which("setpriv")
    if is_root:
        report.add("setpriv", setpriv is not None, setpriv or "not found (util-linux)")
    _check_limits(report, is_root)
    _check_volume(report, try_volume)
    if bwrap is not None and env is not None and (setpriv is not None or not is_root):
        _probe_namespaces(report, bwrap, env, setpriv if is_root else None, settings.sandbox_uid_base)
    return report


def _check_environment(report: IsolationReport, settings: Settings) -> SandboxEnv | None:
    """Whether the sandbox's environment exists and imports its packages; the environment if it exists."""
    try:
        env = SandboxEnv.locate(settings.sandbox_env)
        proc = subprocess.run(
            [str(env.python), "-c", "import " + ", ".join(PACKAGES)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if proc.returncode == 0:
            report.add("environment", True, f"{env.root} (Python from {env.base_prefix}; {', '.join(PACKAGES)})")
        else:
            report.add("environment", False, f"{env.root}: packages missing: {proc.stderr.strip()[-300:]}")
    except SandboxUnavailable as e:
        report.add("environment", False, e.message)
        return None
    return env


def _check_limits(report: IsolationReport, is_root: bool) -> None:
    """Which cgroup controllers there are, and so how each resource is limited."""
    cg = CgroupSupport.probe()
    report.add("cgroups", cg.memory and cg.pids, cg.describe(), required=False)
    lim = []
    lim.append("memory: " + ("cgroup" if cg.memory else "RLIMIT_AS"))
    lim.append("processes: " + ("cgroup pids" if cg.pids else ("RLIMIT_NPROC" if is_root else "none")))
    lim.append("cpu: " + ("cgroup cpu" if cg.cpu else "none (leftover processes are still ended after each execution)"))
    lim.append("file size: RLIMIT_FSIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    report.add("limits", True, "; ".join(lim) + f" (rlimits usable: AS {soft}/{hard})", required=False)


def _check_volume(report: IsolationReport, try_volume: bool) -> None:
    """Whether /mnt/data can be a loop volume of exactly the disk limit (one is made, when `try_volume`)."""
    loop_ok, why = loop_volumes_possible()
    if loop_ok and try_volume:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                vol = DataVolume.create(Path(tmp) / "v", Path(tmp) / "m", uid=0, gid=0, disk_bytes=16 << 20, loop=True)
                vol.destroy()
            except OSError as e:
                loop_ok, why = False, str(e)
    report.add(
        "/mnt/data quota",
        loop_ok,
        "loop-mounted ext4 volume of exactly the disk limit" if loop_ok
        else f"folder, limit checked while code runs ({why})",
        required=False,
    )  # fmt: skip


def _probe_namespaces(report: IsolationReport, bwrap: str, env: SandboxEnv, setpriv: str | None, uid_base: int) -> None:
    """Run the probe inside bwrap, with the sandbox's namespaces (and, through `setpriv` when given, a
    uid of its own), and report what it saw from inside."""
    args = [
        bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--new-session", "--cap-drop", "ALL", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
    ]  # fmt: skip
    for top in ("bin", "lib", "lib64"):
        host = Path("/") / top
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{top}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{top}"]
    if not str(env.base_prefix).startswith("/usr"):
        args += ["--ro-bind", str(env.base_prefix), str(env.base_prefix)]
    args += ["--ro-bind", str(env.root), "/opt/loom/env", "--", "/opt/loom/env/bin/python", "-I", "-c", _PROBE]
    if setpriv is not None:
        uid = str(uid_base)
        args = [setpriv, "--reuid", uid, "--regid", uid, "--clear-groups", "--", *args]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        report.add("namespaces", False, f"bwrap could not run: {e}")
        return
    if proc.returncode != 0:
        report.add(
            "namespaces", False,
            "bwrap could not make the sandbox (user namespaces not allowed?): " + proc.stderr.strip()[-400:],
        )  # fmt: skip
        return
    got = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    report.add("user namespace", got.get("uid") == str(SANDBOX_UID), f"uid inside {got.get('uid')}")
    report.add("network", got.get("net") == "unreachable" and got.get("ifaces") == "lo",
               f"own namespace, interfaces: {got.get('ifaces')}, outside {got.get('net')}")  # fmt: skip
    report.add("capabilities", got.get("caps") == "0000000000000000", f"effective {got.get('caps')}")
    report.add("no_new_privs", got.get("nnp") == "1", f"NoNewPrivs {got.get('nnp')}")
    report.add("read-only system", got.get("usr") == "read-only", f"/usr {got.get('usr')}")


def main() -> int:
    report = check_isolation()
    print(report.format())
    return 0 if report.available else 1
