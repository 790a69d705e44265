"""A real `loom serve` subprocess for contract and end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
# Data directories the servers of this test session made, removed when the session ends (tests/conftest.py).
CREATED_DIRS: list[Path] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def healthy(proc: subprocess.Popen[Any], port: int) -> bool:
    """Whether the `loom serve` in `proc` answers /health on `port`; raises if it has exited."""
    if proc.poll() is not None:
        out = proc.communicate()[1] if proc.stderr is not None else ""
        raise RuntimeError(f"loom serve exited with {proc.returncode}: {out}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class LoomServer:
    """Starts `loom serve` on a free loopback port with its own data directory (and database)."""

    def __init__(
        self,
        *,
        database_url: str = "",
        api_keys: tuple[str, ...] = ("sk-test-default",),
        upstream_base_url: str = "http://127.0.0.1:9/v1",
        data_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
        serve_args: tuple[str, ...] = (),
    ) -> None:
        # A command the server is started under (e.g. `unshare --pid ...`), with the server's argv appended.
        self.wrapper = wrapper
        if data_dir is None:
            data_dir = Path(tempfile.mkdtemp(prefix="loom-test-"))
            CREATED_DIRS.append(data_dir)
        self.data_dir = data_dir
        self.database_url = database_url
        self.port = free_port()
        self.env = {
            **os.environ,
            "LOOM_DATA_DIR": str(self.data_dir),
            "LOOM_DATABASE_URL": database_url,
            "LOOM_API_KEYS": ",".join(api_keys),
            "LOOM_UPSTREAM_BASE_URL": upstream_base_url,
            "LOOM_UPSTREAM_API_KEY": "sk-upstream",
            # The scripted upstream behaves as OpenAI does; no need to ask it what it is.
            "LOOM_UPSTREAM_DIALECT": "openai",
            "LOOM_POLL_AFTER_MS": "20",
            # Kernels start on first use: most test servers never run code.
            "LOOM_SANDBOX_PREWARM": "false",
            # A stop (SIGTERM) waits this long at most for runs still executing (graceful drain).
            "LOOM_DRAIN_TIMEOUT_S": "5",
            **(extra_env or {}),
        }
        self.serve_args = serve_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 60.0) -> LoomServer:
        # The child keeps its own copy of the descriptor: ours is closed at once.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.wrapper,
                    sys.executable,
                    "-m",
                    "loom.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                    *self.serve_args,
                ],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        try:
            wait_for(lambda: healthy(proc, self.port), timeout, "loom serve to answer /health", interval=0.1)
        except AssertionError:
            raise RuntimeError(f"loom serve did not start in {timeout}s:\n{self.log()}") from None
        except RuntimeError as exc:  # it exited
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `loom …` against this server's database."""
        return subprocess.run(
            [sys.executable, "-m", "loom.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def new_project_key(self, project: str = "other") -> str:
        """A key of another project, made with `loom keys create` while the server runs."""
        result = self.cli("keys", "create", "--project", project)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> LoomServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
