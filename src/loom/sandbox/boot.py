"""Starts the IPython kernel inside the sandbox. Runs with the sandbox's own Python: stdlib and ipykernel only.

argv[1] is a JSON file: {"connection_file", "rlimits": {name: value}, "output_budget", "mpl_cache"}.
Everything here runs before any user code, so the limits it sets (hard and soft alike) cannot be raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
from collections.abc import Callable
from typing import Any


def _set_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError) as e:
            print(f"loom boot: cannot set {name}: {e}", file=sys.stderr)


def _become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): what the code orphans is re-parented to this process, not to init."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


def _prime_matplotlib(cache_dir: str | None) -> None:
    target = os.environ.get("MPLCONFIGDIR")
    if not target or not cache_dir or not os.path.isdir(cache_dir):
        return
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(cache_dir):
        with contextlib.suppress(OSError):
            shutil.copyfile(os.path.join(cache_dir, name), os.path.join(target, name))


def _limit_output(budget: int) -> Callable[..., None]:
    """Stop sending a cell's text once it is far past what the host will keep (the host truncates anyway)."""
    from ipykernel.iostream import OutStream

    state: dict[str, Any] = {"sent": 0, "marked": False}
    original = OutStream.write

    def write(self: Any, string: str) -> int | None:
        if not isinstance(string, str):
            return original(self, string)
        if state["sent"] >= budget:
            if not state["marked"]:
                state["marked"] = True
                original(self, "\n[loom: further output of this execution was dropped]\n")
            return len(string)
        state["sent"] += len(string)
        return original(self, string)

    OutStream.write = write  # type: ignore[method-assign]

    def reset(*_args: object, **_kwargs: object) -> None:
        state["sent"] = 0
        state["marked"] = False

    return reset


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    _set_rlimits(config.get("rlimits", {}))
    # Lead a process group: an interrupt (SIGINT to the group) also reaches what the code started.
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if config.get("subreaper"):
        _become_subreaper()
    _prime_matplotlib(config.get("mpl_cache"))
    # No debugger: nothing could attach to it, and it costs memory and start-up time.
    sys.modules["debugpy"] = None  # type: ignore[assignment]
    if config.get("cwd"):
        os.chdir(config["cwd"])

    from ipykernel.kernelapp import IPKernelApp

    app: Any = IPKernelApp.instance()
    app.initialize(
        [
            "-f",
            config["connection_file"],
            "--HistoryManager.enabled=False",
            "--InteractiveShell.colors=nocolor",
            "--InteractiveShell.xmode=Plain",
            "--IPKernelApp.quiet=True",
        ]
    )
    reset = _limit_output(int(config.get("output_budget", 1 << 20)))
    app.shell.events.register("pre_run_cell", reset)
    app.start()


if __name__ == "__main__":
    main()
