"""deploy/nginx.conf, run for real: rendered with the test's replicas and port, as an unprivileged
process of its own (own prefix, pid file, logs and temporary folders, on loopback)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import REPO, free_port
from tests.support.wait import wait_for

CONFIG = REPO / "deploy" / "nginx.conf"
NOBODY = 65534


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed (make nginx)")
    return found


def render(config: str, *, replicas: list[int], port: int, prefix: Path) -> str:
    """The repository's config with these replicas' ports, this listen port and paths under `prefix`;
    one worker, so that round-robin alternates strictly between the replicas."""
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in replicas)
    out, count = re.subn(r"(upstream loom \{\n(?:\s*#[^\n]*\n)*)(\s*server [^\n]*\n)+", rf"\g<1>{servers}", config)
    assert count == 1, "deploy/nginx.conf: no `upstream loom` block of server lines"
    out, count = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", out)
    assert count == 1, "deploy/nginx.conf: no `listen 80;`"
    out, count = re.subn(r"worker_processes auto;", "worker_processes 1;", out)
    assert count == 1
    out, count = re.subn(r"access_log [^;]+;", f"access_log {prefix}/access.log;", out)
    assert count == 1
    paths = f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
    temps = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    out = paths + out.replace("http {\n", "http {\n" + temps, 1)
    return out


class Nginx:
    def __init__(self, replicas: list[int]) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="loom-nginx-"))
        self.port = free_port()
        self.config_path = self.prefix / "nginx.conf"
        self.config_path.write_text(render(CONFIG.read_text(), replicas=replicas, port=self.port, prefix=self.prefix))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Nginx:
        command = [
            nginx_binary(),
            "-p",
            str(self.prefix),
            "-e",
            str(self.prefix / "error.log"),
            "-c",
            str(self.config_path),
        ]
        command += ["-g", "daemon off;"]
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:  # never as root: as nobody, owning only its own folder
            os.chmod(self.prefix, 0o755)
            for path in [self.prefix, *self.prefix.iterdir()]:
                os.chown(path, NOBODY, NOBODY)
            kwargs = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        with (self.prefix / "stderr.log").open("ab") as err:
            self.proc = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT, **kwargs)
        wait_for(self._up, 15, "nginx to listen", interval=0.05)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {self.log()}")
        try:
            httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in (self.prefix / "stderr.log", self.prefix / "error.log") if p.exists()
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # (our own child only)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.prefix, ignore_errors=True)
