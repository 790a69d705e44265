"""`loom sandbox setup [--env DIR] [--python PY] [--force] [-q]` and `python -m loom.sandbox.setup`, as processes.

The environments here are made up-to-date by their marker (no packages are installed): what is tested is
that the options reach the setup, and that `--force` rebuilds (here: tries to, and fails cleanly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loom.sandbox.setup import MARKER, _fingerprint
from tests.support.server import REPO

ENTRY_POINTS = {
    "loom": [str(Path(sys.executable).with_name("loom")), "sandbox", "setup"],
    "module": [sys.executable, "-m", "loom.sandbox.setup"],
}
MISSING_PYTHON = "/nonexistent/bin/python3"


def _current_env(root: Path, base: str) -> Path:
    """An environment whose marker says it was made from `base` with today's requirements."""
    env = root / "sandbox-env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    (env / MARKER).write_text(json.dumps({"fingerprint": _fingerprint(base), "base": base}))
    return env


def _setup(entry: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    environ.update(env or {})
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=environ
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_env_and_quiet(entry: str, tmp_path: Path) -> None:
    env = _current_env(tmp_path, MISSING_PYTHON)
    told = _setup(entry, "--env", str(env), "--python", MISSING_PYTHON)
    assert told.returncode == 0, told.stderr
    assert told.stdout.strip() == f"sandbox environment {env} is up to date"

    quiet = _setup(entry, "--env", str(env), "--python", MISSING_PYTHON, "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""

    # Without --env, LOOM_SANDBOX_ENV names it (and --quiet is -q).
    by_env = _setup(entry, "--quiet", env={"LOOM_SANDBOX_ENV": str(env), "LOOM_SANDBOX_PYTHON": MISSING_PYTHON})
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == ""


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_force_rebuilds_and_a_failed_rebuild_keeps_the_env(entry: str, tmp_path: Path) -> None:
    env = _current_env(tmp_path, MISSING_PYTHON)
    forced = _setup(entry, "--env", str(env), "--python", MISSING_PYTHON, "--force", "-q")
    # --force skips the up-to-date check: the rebuild starts, finds no interpreter and says so.
    assert forced.returncode == 1
    assert f"Could not create a virtualenv with {MISSING_PYTHON}" in forced.stderr
    assert "Traceback" not in forced.stderr
    # ...before removing the environment that was there.
    assert (env / MARKER).is_file() and (env / "bin" / "python").exists()


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    refused = _setup("loom", "--env", str(tmp_path), "--bogus")
    assert refused.returncode == 2
    assert "unrecognized arguments: --bogus" in refused.stderr
