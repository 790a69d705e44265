"""What the sandbox gives back, its limits, its errors, and the `Sandbox` protocol the run engine uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from loom.errors import InvalidRequest, NotFound, ServiceUnavailable

if TYPE_CHECKING:
    from loom.config import Settings

#: Where a session's files live, as the code in the sandbox sees them.
DATA_DIR = "/mnt/data"


# ----------------------------------------------------------------------------------------------- errors


class SandboxUnavailable(ServiceUnavailable):
    """The sandbox cannot run here (bubblewrap missing, no environment, too many sessions busy, ...).

    Never answered by running code unsandboxed: only `LOOM_SANDBOX=unsafe-local` does that.
    """

    def __init__(self, message: str, *, code: str | None = "sandbox_unavailable") -> None:
        super().__init__(message, code=code)


class SandboxFileError(InvalidRequest):
    """A file name or path that is refused (outside /mnt/data, a link, too big, ...)."""

    def __init__(self, message: str, *, code: str | None = "sandbox_file_refused") -> None:
        super().__init__(message, code=code)


class SandboxFileNotFound(NotFound):
    def __init__(self, path: str) -> None:
        super().__init__("sandbox file", path)


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class LogOutput:
    """Text the code produced: stdout, stderr, tracebacks, the value of the last expression."""

    text: str
    type: Literal["logs"] = "logs"


@dataclass(frozen=True, slots=True)
class ImageOutput:
    """An image the code displayed (a matplotlib figure via `plt.show()`, `display(...)`): PNG bytes."""

    png: bytes
    type: Literal["image"] = "image"


Status = Literal["ok", "error", "timeout", "crashed"]


@dataclass(slots=True)
class ExecutionResult:
    """One execution's outcome. Errors in the user's code are outputs (status "error"), not exceptions.

    `outputs` keeps the order in which text and images came; consecutive text is merged into one item.
    `status` is "timeout" when the wall-time limit ended the execution, "crashed" when the kernel died
    (out of memory, killed); in both cases `notice` says what happened and whether state was lost.
    """

    status: Status
    outputs: list[LogOutput | ImageOutput] = field(default_factory=list)
    error_name: str | None = None
    error_value: str | None = None
    timed_out: bool = False
    kernel_restarted: bool = False
    truncated: bool = False
    duration_s: float = 0.0
    notice: str | None = None
    #: False only under `LOOM_SANDBOX=unsafe-local`.
    sandboxed: bool = True

    @property
    def logs(self) -> str:
        """All the text outputs, in order (the notice, if any, is part of the last one)."""
        return "".join(o.text for o in self.outputs if isinstance(o, LogOutput))

    @property
    def images(self) -> list[bytes]:
        return [o.png for o in self.outputs if isinstance(o, ImageOutput)]


@dataclass(frozen=True, slots=True)
class SandboxFile:
    """A regular file in a session's /mnt/data."""

    path: str  # "/mnt/data/sub/x.csv"
    size: int
    mtime: float

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    timeout_s: float = 60.0
    memory_bytes: int = 1024 * 1024 * 1024
    max_processes: int = 128
    disk_bytes: int = 1024 * 1024 * 1024
    tmp_bytes: int = 256 * 1024 * 1024
    max_output_bytes: int = 64 * 1024
    max_images: int = 16
    #: After an interrupt, how long the kernel has to come back before it is restarted.
    interrupt_grace_s: float = 2.0
    #: Largest file `read_file` hands back.
    max_read_bytes: int = 512 * 1024 * 1024
    #: CPU cores a session may use (0: no limit); applied where the machine has the cgroup `cpu` controller.
    cpus: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        mib = 1024 * 1024
        return cls(
            timeout_s=settings.sandbox_timeout_s,
            memory_bytes=settings.sandbox_memory_mb * mib,
            max_processes=settings.sandbox_max_processes,
            disk_bytes=settings.sandbox_disk_mb * mib,
            tmp_bytes=settings.sandbox_tmp_mb * mib,
            max_output_bytes=settings.sandbox_max_output_bytes,
            max_images=settings.sandbox_max_images,
            max_read_bytes=settings.max_file_bytes,
            cpus=settings.sandbox_cpus,
        )


# --------------------------------------------------------------------------------------------- protocol


@runtime_checkable
class Sandbox(Protocol):
    """One session: a Python kernel whose variables survive between executions, and its /mnt/data."""

    @property
    def key(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    async def execute(
        self, code: str, *, timeout_s: float | None = None, on_text: Callable[[str], None] | None = None
    ) -> ExecutionResult:
        """Run `code`; never raises for errors in the code itself (see `ExecutionResult`). `on_text` is
        told the text the code prints as it comes (the start of the result's `logs`)."""
        ...

    async def put_file(self, name: str, data: bytes | Path) -> str:
        """Write `data` (bytes, or a host file copied a chunk at a time) as /mnt/data/<name> (the name is
        reduced to a safe base name); returns that path."""
        ...

    async def read_file(self, path: str) -> bytes:
        """The bytes of a regular file under /mnt/data (`/mnt/data/x`, `sandbox:/mnt/data/x` or `x`)."""
        ...

    async def list_files(self) -> list[SandboxFile]:
        """Regular files under /mnt/data (recursively, links and names that are not UTF-8 skipped)."""
        ...

    async def export_file(self, path: str, dest: Path, max_bytes: int) -> int:
        """Copy a regular file under /mnt/data to the host path `dest`, streamed; returns its size.
        SandboxFileError past `max_bytes` (nothing is left at `dest` then)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SandboxProvider(Protocol):
    """What the run engine holds: sessions by key (the thread id)."""

    async def start(self) -> None: ...

    async def session(self, key: str) -> Sandbox:
        """The live session for `key`, made (from the pool of started kernels) if there is none."""
        ...

    async def close_session(self, key: str) -> None: ...

    def get(self, key: str) -> Sandbox | None:
        """The live session for `key`, if there is one (does not make one)."""
        ...

    async def aclose(self) -> None: ...


def default_sandbox_dir(settings: Settings) -> Path:
    return settings.sandbox_dir if settings.sandbox_dir is not None else settings.data_dir / "sandbox"
