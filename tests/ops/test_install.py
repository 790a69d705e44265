"""The distribution: `python -m build` makes a wheel and an sdist named `loom-assistants`; the wheel,
installed into a fresh virtualenv, gives a `loom` command that fetches the default embedder's weights
(`loom weights fetch`: it refuses to serve before) and serves from any directory, with its data in the
per-user data directory, and runs the code interpreter.

To keep the test cheap, the fresh venv gets the wheel itself with `--no-deps` and borrows the
dependencies from the development venv through a `.pth` line (the editable checkout there is not on
that path: the wheel's own `loom` is imported, which the test checks); the code interpreter's
environment is the existing one (LOOM_SANDBOX_ENV), and the model is the scripted fake upstream.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.support.server import REPO, free_port
from tests.support.wait import wait_for

# It serves from a built wheel with its own `loom serve`, not a LoomServer: marked by hand.
pytestmark = pytest.mark.e2e

SANDBOX_ENV = Path(os.environ.get("LOOM_SANDBOX_ENV", str(REPO / ".venv-sandbox"))).absolute()


def test_wheel_installs_and_serves_from_anywhere(tmp_path: Path, upstream: FakeUpstream) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], check=True, capture_output=True, timeout=240
    )
    wheel = next(dist.glob("loom_assistants-*-py3-none-any.whl"))
    sdist = next(dist.glob("loom_assistants-*.tar.gz"))
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    assert "loom/sandbox/requirements.txt" in names and any(n.startswith("loom/store/migrations/") for n in names)
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("/src/loom/cli.py") for n in tar.getnames())

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], check=True, capture_output=True, timeout=240)
    fresh_site = next((venv / "lib").glob("python3*/site-packages"))
    (fresh_site / "zz_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_") and k != "XDG_DATA_HOME"}
    env.update(
        HOME=str(home),
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
        LOOM_UPSTREAM_BASE_URL=upstream.base_url,
        LOOM_UPSTREAM_API_KEY="sk-upstream",
        LOOM_SANDBOX_ENV=str(SANDBOX_ENV),
        LOOM_SANDBOX_POOL_SIZE="1",
    )
    where = subprocess.run(
        ["loom", "config", "show"], env=env, cwd=elsewhere, capture_output=True, text=True, check=True, timeout=60
    )
    data_dir = home / ".local" / "share" / "loom"
    shown = {line.split()[0]: line.split()[1] for line in where.stdout.splitlines()}
    assert shown["data_dir"] == str(data_dir) and shown["sandbox_env"] == str(SANDBOX_ENV)
    imported = subprocess.run(
        ["python", "-c", "import loom; print(loom.__file__)"], env=env, cwd=elsewhere, capture_output=True, text=True
    )
    assert imported.stdout.startswith(str(venv)), imported.stdout

    # The default embedder's weights, as the README says: without them `loom serve` refuses to start.
    weights = home / ".cache" / "loom" / "weights" / "all-MiniLM-L6-v2"
    refused = subprocess.run(
        ["loom", "serve", "--port", str(free_port())],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "weights" in refused.stderr, refused.stderr
    fetched = subprocess.run(
        ["loom", "weights", "fetch"], env=env, cwd=elsewhere, capture_output=True, text=True, timeout=600
    )
    assert fetched.returncode == 0, fetched.stderr
    assert (weights / "model.safetensors").is_file() and any((weights / "onnx").glob("*.onnx")), fetched.stderr
    verified = subprocess.run(["loom", "weights", "verify"], env=env, cwd=elsewhere, capture_output=True, timeout=120)
    assert verified.returncode == 0, verified.stderr

    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(["loom", "serve", "--port", str(port)], env=env, cwd=elsewhere, stdout=log, stderr=log)
    try:
        wait_for(lambda: _healthy(port, proc), timeout=90, what="the installed loom serve")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=0, timeout=120)
        upstream.push(
            Turn.calls(ToolCallSpec("code_interpreter", {"code": "print(6 * 7)"})),
            Turn.reply("It is 42."),
        )
        assistant = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "6 times 7?"}])
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=50
        )
        assert run.status == "completed", (run.last_error, (tmp_path / "serve.log").read_text())
        steps = client.beta.threads.runs.steps.list(run_id=run.id, thread_id=thread.id, order="asc").data
        calls = [c for s in steps if s.step_details.type == "tool_calls" for c in s.step_details.tool_calls]
        assert calls and calls[0].type == "code_interpreter"
        assert [o.logs for o in calls[0].code_interpreter.outputs if o.type == "logs"] == ["42\n"]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    # Its data went to the per-user data directory, not the working directory.
    assert (data_dir / "loom.db").is_file()
    assert not any(elsewhere.iterdir())
    shutil.rmtree(venv)


def _healthy(port: int, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "loom serve exited"
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
