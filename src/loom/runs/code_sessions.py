"""The code interpreter's work in a thread's session, where the session lives.

`LocalCodeSessions` does it in this replica's sandbox: copies the input Files into `/mnt/data`, runs the
code, makes Files of the images, names the files the code wrote (`execute`); makes Files of linked
sandbox files (`export`). What it returns is plain data (`Execution`), so that the same work can run in
another replica's session and come back over the internal channel (`loom.scaleout.affinity`).

Executions on one session never interleave: the whole of one (inputs, code, listing) holds the thread's
lock, whether it came from a run here or was forwarded by another replica.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from loom.errors import LoomError
from loom.runs.ports import OutputFileWriter, StoredFileReader
from loom.sandbox.types import SandboxProvider

log = logging.getLogger("loom.runs")
TextSink = Callable[[str], None]


@dataclass(slots=True)
class Execution:
    """One execution's outcome, as plain data (JSON both ways)."""

    status: str
    logs: str
    image_file_ids: list[str] = field(default_factory=list)
    written: list[tuple[str, int]] = field(default_factory=list)  # (path, size) of files the code wrote

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Execution:
        return cls(
            status=str(data["status"]),
            logs=str(data["logs"]),
            image_file_ids=[str(x) for x in data.get("image_file_ids", [])],
            written=[(str(p), int(s)) for p, s in data.get("written", [])],
        )


class CodeSessions(Protocol):
    """Where a thread's code runs: this replica's sandbox, or the replica that owns the thread's session."""

    async def execute(
        self,
        project: str,
        thread_id: str,
        code: str,
        file_ids: list[str],
        call_id: str,
        *,
        timeout_s: float | None = None,
        on_text: TextSink | None = None,
    ) -> Execution:
        """Run `code` in the thread's session with `file_ids` present in /mnt/data, for at most `timeout_s`
        (the sandbox's default without it); what it prints goes to `on_text` as it comes where the session
        is here (a forwarded execution's logs come with its outcome). SandboxUnavailable when no sandbox
        can run it."""
        ...

    async def export(self, project: str, thread_id: str, links: list[str], max_bytes: int) -> list[tuple[str, str]]:
        """Make Files of the linked sandbox files (`sandbox:/mnt/data/x`) of the thread's live session:
        (link, file id) for each one made; none when the thread has no session."""
        ...


class LocalCodeSessions:
    """The thread's session in this replica's sandbox. Implements `CodeSessions`."""

    def __init__(self, sandbox: SandboxProvider, inputs: StoredFileReader, outputs: OutputFileWriter) -> None:
        self.sandbox = sandbox
        self.inputs = inputs
        self.outputs = outputs
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, thread_id: str) -> asyncio.Lock:
        """The lock one thread's executions take (so that none interleave in its kernel)."""
        found = self._locks.get(thread_id)
        if found is None:
            found = asyncio.Lock()
            self._locks[thread_id] = found
        return found

    def has_session(self, thread_id: str) -> bool:
        return self.sandbox.get(thread_id) is not None

    async def execute(
        self,
        project: str,
        thread_id: str,
        code: str,
        file_ids: list[str],
        call_id: str,
        *,
        timeout_s: float | None = None,
        on_text: TextSink | None = None,
    ) -> Execution:
        lock = self.lock(thread_id)
        async with lock:
            session = await self.sandbox.session(thread_id)
            present = {f.name: f for f in await session.list_files()}
            for file_id in file_ids:
                try:
                    found = await self.inputs.stored_file(project, file_id)
                except Exception:
                    continue
                if found is not None and found[0] not in present:
                    # From the blob store (a copy spooled here when it is remote), copied in a chunk at a
                    # time off the event loop: never whole in memory.
                    async with self.inputs.local_file(found[1]) as local:
                        await session.put_file(found[0], local)
            before = {f.path: f.mtime for f in await session.list_files()}
            # (What the code leaves running is ended by the sandbox itself, after each execution.)
            result = await session.execute(code, timeout_s=timeout_s, on_text=on_text)
            after = await session.list_files()
        images = [
            await self.outputs.write_output(project, f"{call_id}-image-{n}.png", png)
            for n, png in enumerate(result.images)
        ]
        written = [(f.path, f.size) for f in after if before.get(f.path) != f.mtime]
        return Execution(status=result.status, logs=result.logs, image_file_ids=images, written=written)

    async def export(self, project: str, thread_id: str, links: list[str], max_bytes: int) -> list[tuple[str, str]]:
        session = self.sandbox.get(thread_id)
        if session is None:
            return []
        made: list[tuple[str, str]] = []
        for link in links:
            temp = self.outputs.new_temp()
            try:
                size = await session.export_file(link, temp, max_bytes)
            except (LoomError, OSError) as exc:  # missing, too large, a link the code planted, ...
                temp.unlink(missing_ok=True)
                log.info("linked sandbox file not returned: %s", getattr(exc, "message", exc))
                continue
            made.append((link, await self.outputs.write_output_from(project, link.rsplit("/", 1)[-1], temp, size)))
        return made
