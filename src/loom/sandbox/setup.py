"""Makes the sandbox's own virtualenv: `loom sandbox setup` or `python -m loom.sandbox.setup` (idempotent;
run by `make sandbox-env`, which `make serve` and `make test` depend on).

The environment is made from a system interpreter (default /usr/bin/python3: read-only and readable by
the sandbox's uid), gets the pinned packages of requirements.txt, and a prebuilt matplotlib font cache
(so that a kernel's first `import matplotlib.pyplot` does not scan fonts). Nothing is downloaded at
run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from loom.config import Settings
from loom.sandbox.launcher import ENV_IN_SANDBOX, MPL_CACHE_IN_ENV

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
MARKER = ".loom-sandbox.json"


def default_base_python(settings: Settings) -> str:
    if settings.sandbox_python:
        return settings.sandbox_python
    if Path("/usr/bin/python3").exists():
        return "/usr/bin/python3"
    return getattr(sys, "_base_executable", sys.executable)


def _fingerprint(base: str) -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update(base.encode())
    return h.hexdigest()[:16]


def is_current(env: Path, base: str) -> bool:
    try:
        marker = json.loads((env / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("fingerprint") == _fingerprint(base) and (env / "bin" / "python").exists())


def _run(args: list[str], **kw: object) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, **kw)  # type: ignore[call-overload]


def build_font_cache(env: Path) -> None:
    """Build matplotlib's font list with the environment's Python, with paths as the sandbox sees them."""
    out = env / MPL_CACHE_IN_ENV
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        env_vars = {"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": tmp, "HOME": tmp, "MPLBACKEND": "agg"}
        subprocess.run(
            [str(env / "bin" / "python"), "-c", "import matplotlib.font_manager"],
            check=True,
            env=env_vars,
        )
        host_prefix = str(env.absolute())
        for cache in Path(tmp).glob("fontlist-*.json"):
            text = cache.read_text().replace(host_prefix, ENV_IN_SANDBOX)
            (out / cache.name).write_text(text)


def _make_readable(root: Path) -> None:
    """The sandbox runs as another uid: everything must be world-readable (directories traversable)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            mode = os.lstat(p).st_mode
            if mode & 0o555 != 0o555:
                os.chmod(p, mode | 0o555)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not os.path.islink(p) and st.st_mode & 0o444 != 0o444:
                os.chmod(p, st.st_mode | 0o444)


def setup(settings: Settings | None = None, *, force: bool = False, quiet: bool = False) -> Path:
    """Create (or update) the sandbox environment; returns its path."""
    settings = settings or Settings.load()
    env = settings.sandbox_env.absolute()
    base = default_base_python(settings)
    if not force and is_current(env, base):
        if not quiet:
            print(f"sandbox environment {env} is up to date")
        return env
    if shutil.which(base) is None:
        # Checked before the old environment is removed: a rebuild that cannot start leaves it as it was.
        raise SystemExit(f"Could not create a virtualenv with {base}: no such interpreter.")
    if env.exists():
        shutil.rmtree(env)
    try:
        _run([base, "-m", "venv", str(env)])
    except subprocess.CalledProcessError as e:
        raise SystemExit(
            f"Could not create a virtualenv with {base} (on Debian: `apt-get install -y python3-venv`): {e}"
        ) from e
    pip = [str(env / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    if quiet:
        pip.append("-q")
    _run([*pip, "install", "-r", str(REQUIREMENTS)])
    build_font_cache(env)
    _make_readable(env)
    (env / MARKER).write_text(json.dumps({"fingerprint": _fingerprint(base), "base": base}))
    if not quiet:
        print(f"sandbox environment ready: {env}")
    return env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `loom sandbox setup` and `python -m loom.sandbox.setup` (one definition for both)."""
    parser.add_argument(
        "--env", type=Path, help="where to make it (default: LOOM_SANDBOX_ENV, else sandbox-env in the data directory)"
    )
    parser.add_argument("--python", help="the interpreter to make it from (default: /usr/bin/python3)")
    parser.add_argument("--force", action="store_true", help="remake it even if it is up to date")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def run(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Set up as parsed `args` say; `--env`/`--python` override LOOM_SANDBOX_ENV/LOOM_SANDBOX_PYTHON."""
    overrides: dict[str, Any] = {}
    if args.env is not None:
        overrides["sandbox_env"] = args.env
    if args.python:
        overrides["sandbox_python"] = args.python
    base = settings or Settings.load()
    setup(base.model_copy(update=overrides), force=args.force, quiet=args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loom.sandbox.setup", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
