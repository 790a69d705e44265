"""A separate virtualenv holding an old openai-python, made once from the package registry and reused."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from tests.support.server import REPO

_lock = threading.Lock()


def compat_python(version: str) -> Path:
    """The interpreter of `.venv-compat-<digits>` with `openai==<version>` installed (created on first use)."""
    short = "".join(version.split(".")[:2])
    venv = REPO / f".venv-compat-{short}"
    python = venv / "bin" / "python"
    with _lock:
        check = [str(python), "-c", f"import openai, sys; sys.exit(openai.__version__ != {version!r})"]
        if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
            return python
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"openai=={version}"],
            check=True,
            timeout=600,
        )
        subprocess.run(check, check=True)
    return python
