"""The code-interpreter sandbox: IPython kernels inside bubblewrap, one session per key (thread).

    manager = SandboxManager(settings)        # a SandboxProvider
    await manager.start()                     # fails with SandboxUnavailable if isolation is impossible
    box = await manager.session(thread_id)    # a Sandbox: kept between executions, closed when idle
    await box.put_file("data.csv", raw)       # -> "/mnt/data/data.csv"
    result = await box.execute("import pandas as pd; print(pd.read_csv('/mnt/data/data.csv'))")
    result.logs, result.images                # text; PNG bytes
    await manager.close_session(thread_id)    # thread deleted
    await manager.aclose()

Setup (once per machine): `apt-get install -y bubblewrap` and `python -m loom.sandbox.setup`.
`check_isolation(settings)` (the CLI's `loom sandbox check`) says what this machine provides.
"""

from loom.sandbox.check import IsolationReport, check_isolation
from loom.sandbox.manager import SandboxManager
from loom.sandbox.session import BwrapSession
from loom.sandbox.types import (
    DATA_DIR,
    ExecutionResult,
    ImageOutput,
    LogOutput,
    Sandbox,
    SandboxFile,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxLimits,
    SandboxProvider,
    SandboxUnavailable,
)

__all__ = [
    "DATA_DIR",
    "BwrapSession",
    "ExecutionResult",
    "ImageOutput",
    "IsolationReport",
    "LogOutput",
    "Sandbox",
    "SandboxFile",
    "SandboxFileError",
    "SandboxFileNotFound",
    "SandboxLimits",
    "SandboxManager",
    "SandboxProvider",
    "SandboxUnavailable",
    "check_isolation",
]
