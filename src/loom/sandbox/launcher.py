"""How a kernel process is started: the bubblewrap command line, its cgroup, its uid, its rlimits.

The chain, for a server running as root (as here and in CI):

    sh -c 'echo $$ > <cgroup>/cgroup.procs ...; exec "$@"'        # root: joins the kernel's cgroups
      setpriv --reuid U --regid U --clear-groups --pdeathsig KILL   # a uid of its own; dies with the server
        bwrap --unshare-all --unshare-user --disable-userns ...     # namespaces, no capabilities
          python boot.py                                            # rlimits, then the IPython kernel

Inside: uid 1000 ("sandbox"), no network (a namespace with only loopback), its own pid namespace,
read-only /usr and environment, a size-limited tmpfs /tmp, the session's /mnt/data read-write, and a
runtime folder (/run/loom) holding the kernel's IPC sockets. Every host path is handed to bwrap as an
open file descriptor (`--ro-bind-fd`), so the sandbox uid needs no access to the folders above them.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loom.sandbox.cgroups import CgroupSupport, KernelCgroup
from loom.sandbox.types import DATA_DIR, SandboxLimits, SandboxUnavailable
from loom.sandbox.volumes import DataVolume

ENV_IN_SANDBOX = "/opt/loom/env"
BOOT_IN_SANDBOX = "/opt/loom/boot.py"
RUN_IN_SANDBOX = "/run/loom"
SANDBOX_UID = 1000
SANDBOX_GID = 1000
#: Matplotlib's font cache, made by setup, copied into the kernel's config folder at boot.
MPL_CACHE_IN_ENV = "share/loom/mpl"

PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"sandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:/tmp:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nsandbox:x:{SANDBOX_GID}:\nnogroup:x:65534:\n"
HOSTS = "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n"

# The kernel's sockets, as "<ip>-<port>" IPC paths.
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


@dataclass(frozen=True)
class SandboxEnv:
    """The sandbox's virtualenv and the interpreter installation it points at."""

    root: Path
    base_prefix: Path  # e.g. /usr

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @classmethod
    def locate(cls, root: Path) -> SandboxEnv:
        root = root.absolute()
        cfg = root / "pyvenv.cfg"
        if not cfg.is_file() or not (root / "bin" / "python").exists():
            raise SandboxUnavailable(
                f"The sandbox environment {root} does not exist: run `python -m loom.sandbox.setup` "
                "(or set LOOM_SANDBOX_ENV to where it was made)."
            )
        parser = configparser.ConfigParser()
        parser.read_string("[venv]\n" + cfg.read_text())
        home = Path(parser.get("venv", "home", fallback="/usr/bin"))
        return cls(root, home.parent)


def _which(name: str) -> str | None:
    for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/bin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class LaunchSpec:
    """Everything one kernel process needs; built by `Launcher.prepare`, run by `KernelProcess.start`."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: list[int]
    runtime_dir: Path
    connection: dict[str, Any]  # as the host connects (IPC paths on the host)
    cgroup: KernelCgroup | None
    sandboxed: bool
    seal: bool  # hand the runtime folder back to root once the kernel has made its sockets
    name: str
    _fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


class Launcher:
    """Builds kernel launches for one manager (one server process)."""

    def __init__(
        self,
        *,
        env: SandboxEnv,
        runtime_root: Path,
        limits: SandboxLimits,
        cgroups: CgroupSupport,
        unsafe_local: bool = False,
        instance: str = "",
    ) -> None:
        self.instance = instance or secrets.token_hex(6)
        self.env = env
        self.runtime_root = runtime_root
        self.limits = limits
        self.cgroups = cgroups
        self.unsafe_local = unsafe_local
        self.is_root = os.geteuid() == 0
        self.bwrap = _which("bwrap")
        self.setpriv = _which("setpriv")
        self.sh = _which("sh") or "/bin/sh"
        self._counter = 0
        if not unsafe_local:
            if self.bwrap is None:
                raise SandboxUnavailable(
                    "The code sandbox is unavailable: bubblewrap (`bwrap`) is not installed "
                    "(Debian: `apt-get install -y bubblewrap`). Code is never run unsandboxed unless "
                    "LOOM_SANDBOX=unsafe-local is set."
                )
            if self.is_root and self.setpriv is None:
                raise SandboxUnavailable("The code sandbox is unavailable: `setpriv` (util-linux) is missing.")

    @property
    def switches_uid(self) -> bool:
        return self.is_root and not self.unsafe_local

    # ---------------------------------------------------------------------------------------- helpers

    def _rlimits(self) -> dict[str, int]:
        lim = self.limits
        out = {"RLIMIT_CORE": 0, "RLIMIT_NOFILE": 4096, "RLIMIT_FSIZE": max(lim.disk_bytes, lim.tmp_bytes)}
        if self.unsafe_local:
            return out
        if not self.cgroups.memory:
            out["RLIMIT_AS"] = lim.memory_bytes
        if self.switches_uid:  # counted per host uid: only meaningful with a uid of its own
            out["RLIMIT_NPROC"] = lim.max_processes
        return out

    def _sandbox_env(self, threads: int) -> dict[str, str]:
        env_bin = f"{ENV_IN_SANDBOX}/bin"
        return {
            "PATH": f"{env_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "USER": "sandbox",
            "LOGNAME": "sandbox",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TERM": "dumb",
            "TMPDIR": "/tmp",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": "/tmp/.config/matplotlib",
            "IPYTHONDIR": "/tmp/.ipython",
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "OPENBLAS_NUM_THREADS": str(threads),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "NUMEXPR_MAX_THREADS": str(threads),
        }

    # ---------------------------------------------------------------------------------------- prepare

    def prepare(self, volume: DataVolume) -> LaunchSpec:
        self._counter += 1
        name = f"k-{self.instance}-{self._counter}-{secrets.token_hex(3)}"
        runtime = self.runtime_root / name
        runtime.mkdir(mode=0o700)
        host_conn = self._write_configs(runtime, volume)
        threads = max(1, min(4, os.cpu_count() or 1, math.ceil(self.limits.cpus) if self.limits.cpus > 0 else 4))
        env = self._sandbox_env(threads)
        if self.unsafe_local:
            env.update(
                PATH=f"{self.env.root}/bin:/usr/bin:/bin",
                HOME=str(runtime),
                MPLCONFIGDIR=str(runtime / "mpl"),
                IPYTHONDIR=str(runtime / "ipython"),
                TMPDIR=str(runtime),
            )
            argv = [str(self.env.python), "-I", "-B", str(self.runtime_root / "boot.py"), str(runtime / "boot.json")]
            return LaunchSpec(argv, env, [], runtime, host_conn, None, False, False, name)

        uid, gid = self._write_etc(runtime, volume)
        cgroup = self.cgroups.create(
            name, memory_bytes=self.limits.memory_bytes, max_pids=self.limits.max_processes, cpus=self.limits.cpus
        )
        fds: list[int] = []
        try:
            args = self._bwrap_args(runtime, volume, fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            if cgroup is not None:
                cgroup.remove()
            raise
        argv = self._wrapped(args, uid, gid, cgroup)
        spec = LaunchSpec(argv, env, list(fds), runtime, host_conn, cgroup, True, self.switches_uid, name)
        spec._fds = fds
        return spec

    def _write_configs(self, runtime: Path, volume: DataVolume) -> dict[str, Any]:
        """The kernel's connection file and boot.py's settings, in its runtime folder; returns the
        connection as the host reaches it."""
        sock_base = "k"
        inner_conn: dict[str, Any] = {
            "transport": "ipc",
            "ip": f"{RUN_IN_SANDBOX}/{sock_base}" if not self.unsafe_local else str(runtime / sock_base),
            "key": secrets.token_hex(32),
            "signature_scheme": "hmac-sha256",
            "kernel_name": "loom-sandbox",
            **PORTS,
        }
        host_conn = {**inner_conn, "ip": str(runtime / sock_base)}
        (runtime / "kernel.json").write_text(json.dumps(inner_conn))
        boot_conf: dict[str, Any] = {
            "connection_file": f"{RUN_IN_SANDBOX}/kernel.json",
            "rlimits": self._rlimits(),
            "output_budget": self.limits.max_output_bytes * 2 + 4096,
            "mpl_cache": f"{ENV_IN_SANDBOX}/{MPL_CACHE_IN_ENV}",
        }
        if self.unsafe_local:
            boot_conf.update(
                connection_file=str(runtime / "kernel.json"),
                mpl_cache=str(self.env.root / MPL_CACHE_IN_ENV),
                cwd=str(volume.path),
                # Orphans of the code come back to the kernel, so they stay in its process tree.
                subreaper=True,
            )
        (runtime / "boot.json").write_text(json.dumps(boot_conf))
        return host_conn

    def _write_etc(self, runtime: Path, volume: DataVolume) -> tuple[int, int]:
        """The sandbox's /etc files, and the runtime folder handed to the session's uid; returns the
        uid and gid the kernel runs as on the host."""
        for fname, text in (("passwd", PASSWD), ("group", GROUP), ("hosts", HOSTS)):
            (runtime / fname).write_text(text)
        uid = volume.uid if self.switches_uid else os.getuid()
        gid = volume.gid if self.switches_uid else os.getgid()
        if self.switches_uid:
            os.chown(runtime, uid, gid)
            for fname in ("kernel.json", "boot.json", "passwd", "group", "hosts"):
                os.chmod(runtime / fname, 0o644)
        return uid, gid

    def _bwrap_args(self, runtime: Path, volume: DataVolume, fds: list[int]) -> list[str]:
        """bwrap's command line; each host path is opened (O_PATH) into `fds` and handed over by number."""

        def fd_of(path: Path | str) -> int:
            flags = os.O_PATH | os.O_CLOEXEC
            fd = os.open(path, flags)
            fds.append(fd)
            return fd

        args: list[str] = [
            self.bwrap or "bwrap",
            "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
            "--hostname", "sandbox",
            "--ro-bind-fd", str(fd_of("/usr")), "/usr",
        ]  # fmt: skip
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / top
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{top}"]
            elif host.is_dir():
                args += ["--ro-bind-fd", str(fd_of(host)), f"/{top}"]
        base = self.env.base_prefix
        if base != Path("/usr") and not str(base).startswith("/usr/"):
            args += ["--ro-bind-fd", str(fd_of(base)), str(base)]
        args += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--size", str(self.limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp",
            "--dir", "/etc",
            "--ro-bind-fd", str(fd_of(runtime / "passwd")), "/etc/passwd",
            "--ro-bind-fd", str(fd_of(runtime / "group")), "/etc/group",
            "--ro-bind-fd", str(fd_of(runtime / "hosts")), "/etc/hosts",
        ]  # fmt: skip
        for etc in ("ld.so.cache", "localtime"):
            host = Path("/etc") / etc
            if host.exists():
                args += ["--ro-bind-fd", str(fd_of(host.resolve())), f"/etc/{etc}"]
        args += [
            "--ro-bind-fd", str(fd_of(self.env.root)), ENV_IN_SANDBOX,
            "--ro-bind-fd", str(fd_of(self.runtime_root / "boot.py")), BOOT_IN_SANDBOX,
            "--bind-fd", str(fd_of(runtime)), RUN_IN_SANDBOX,
            "--bind-fd", str(fd_of(volume.path)), DATA_DIR,
            "--chdir", DATA_DIR,
            "--remount-ro", "/",
            "--",
            f"{ENV_IN_SANDBOX}/bin/python", "-I", "-B", BOOT_IN_SANDBOX, f"{RUN_IN_SANDBOX}/boot.json",
        ]  # fmt: skip
        return args

    def _wrapped(self, args: list[str], uid: int, gid: int, cgroup: KernelCgroup | None) -> list[str]:
        """bwrap's command line run as the session's uid (setpriv), dying with the server, from a shell
        that first joins the kernel's cgroups (root's part: nothing of the sandbox runs before)."""
        inner = args
        pdeath = ["--pdeathsig", "KILL"]
        if self.setpriv is not None:
            ids = ["--reuid", str(uid), "--regid", str(gid), "--clear-groups"] if self.switches_uid else []
            inner = [self.setpriv, *ids, *pdeath, "--", *args]
        procs = [str(p) for p in cgroup.procs_files] if cgroup is not None else []
        script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 121; shift; n=$((n-1)); done; exec "$@"'
        return [self.sh, "-c", script, "sh", str(len(procs)), *procs, *inner]
