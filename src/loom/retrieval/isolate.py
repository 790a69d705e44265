"""Parsing and chunking in a child process with a memory and a time limit.

A file's parser is whatever library reads its format, fed whatever bytes a user uploaded: a zip bomb,
a 200 MB line, a PDF of 10,000 pages. None of it runs in the server. Each file gets a fresh child,
forked by the server's parse host (`loom.retrieval.parse_host`, started on first use) that has the
parsers and the chunk vocabulary loaded, so a child starts in milliseconds. The child limits its own
address space (RLIMIT_AS: what it had at the fork plus `memory_mb`) and time (an alarm at
`timeout_s`), parses and chunks, and writes the chunks to a file as JSON lines, then a result file
saying how it went. The server streams the chunks from that file a batch at a time.

A child that runs out of memory, overruns its time or dies of a signal fails that one file with a
clear `last_error`; the server carries on, and nothing is retried that would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.retrieval.chunking import Chunk, ChunkingStrategy
from loom.retrieval.errors import IndexingFailed, InvalidFile, UnsupportedFile
from loom.retrieval.parse_host import EXIT_NO_MEMORY


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Per file: extra address space the parsing child may use, and wall-clock seconds it may take."""

    memory_mb: int = 2048
    timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Extracted:
    """What the child made of a file: its chunks are in `chunks_path`, one JSON object a line."""

    chunks_path: Path
    chunks: int
    tokens: int
    text_bytes: int
    kind: str
    pages: int | None

    def read_batches(self, size: int) -> Iterator[list[Chunk]]:
        with self.chunks_path.open("r", encoding="utf-8") as f:
            batch: list[Chunk] = []
            for line in f:
                i, text, start, end, tokens = json.loads(line)
                batch.append(Chunk(i, text, start, end, tokens))
                if len(batch) >= size:
                    yield batch
                    batch = []
            if batch:
                yield batch


class ParseHost:
    """The server's side of `loom.retrieval.parse_host`: one helper process, started on first use."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def _ensure(self) -> asyncio.subprocess.Process:
        async with self._lock:
            dead = self._reader is None or self._reader.done()
            if self._proc is None or self._proc.returncode is not None or dead:
                if self._proc is not None and self._proc.returncode is None:
                    self._proc.kill()  # our own helper that stopped answering, by its pid
                    await self._proc.wait()
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "loom.retrieval.parse_host",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
                )
                self._reader = asyncio.create_task(self._read(self._proc), name="loom-parse-host")
            return self._proc

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                answer = json.loads(line)
                future = self._pending.pop(int(answer["id"]), None)
                if future is not None and not future.done():
                    future.set_result(int(answer["code"]))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(IndexingFailed("The file's parsing process stopped unexpectedly."))
            self._pending.clear()

    async def _send(self, proc: asyncio.subprocess.Process, obj: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        await proc.stdin.drain()

    async def run(self, job: dict[str, Any], wait_s: float) -> int | None:
        """Run one job; its child's exit code, or None when it outlived `wait_s` (it is then ended)."""
        proc = await self._ensure()
        job_id = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = future
        try:
            await self._send(proc, {**job, "id": job_id})
            return await asyncio.wait_for(asyncio.shield(future), wait_s)
        except (TimeoutError, asyncio.CancelledError):
            self._pending.pop(job_id, None)
            with contextlib.suppress(Exception):
                await self._send(proc, {"cancel": job_id})
            if isinstance(sys.exc_info()[1], asyncio.CancelledError):
                raise
            return None

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()  # end of input: the host ends its children and exits
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()  # our own helper, by its pid
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


_hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ParseHost] = weakref.WeakKeyDictionary()


def host() -> ParseHost:
    """This event loop's parse host."""
    loop = asyncio.get_running_loop()
    found = _hosts.get(loop)
    if found is None:
        found = _hosts[loop] = ParseHost()
    return found


async def close_host() -> None:
    """Stop this event loop's parse host, if it has one (its children with it)."""
    found = _hosts.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()


async def extract(
    path: Path, filename: str, chunking: ChunkingStrategy, out_dir: Path, limits: ParseLimits
) -> Extracted:
    """Parse and chunk `path` in a limited child; raises `FileProcessingError` for a file that failed."""
    job = {
        "path": str(path),
        "filename": filename,
        "size": chunking.max_chunk_size_tokens,
        "overlap": chunking.chunk_overlap_tokens,
        "out": str(out_dir),
        "memory_mb": limits.memory_mb,
        "timeout_s": limits.timeout_s,
    }
    # The child's own alarm ends it at `timeout_s`; the margin only covers a host that stopped answering.
    code = await host().run(job, limits.timeout_s + 30)
    if code is None or code == -signal.SIGALRM:
        raise InvalidFile(
            f"The file could not be processed within {limits.timeout_s:g} seconds, the time limit for "
            "extracting the text of one file."
        )
    return _outcome(code, out_dir, limits)


def _outcome(code: int, out_dir: Path, limits: ParseLimits) -> Extracted:
    result_path = out_dir / "result.json"
    if code == 0 and result_path.exists():
        result = json.loads(result_path.read_text())
        error = result.get("error")
        if error is None:
            return Extracted(
                chunks_path=out_dir / "chunks.jsonl",
                chunks=int(result["chunks"]),
                tokens=int(result["tokens"]),
                text_bytes=int(result["text_bytes"]),
                kind=str(result["kind"]),
                pages=result["pages"],
            )
        cls = {"invalid_file": InvalidFile, "unsupported_file": UnsupportedFile}.get(error, IndexingFailed)
        raise cls(str(result["message"]))
    if code in (EXIT_NO_MEMORY, -signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
        # Out of address space shows as MemoryError in Python code, and as an abort or a crash in C.
        raise InvalidFile(
            f"The file needs more than {limits.memory_mb:,} MB of memory to extract its text, the limit for one file."
        )
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        raise IndexingFailed(f"The file's parser was stopped by signal {name}.")
    raise IndexingFailed(f"The file's parser failed (exit status {code}).")


def work_dir(prefix: str = "loom-ingest-") -> tempfile.TemporaryDirectory[str]:
    """A private directory for one file's chunks, removed afterwards."""
    return tempfile.TemporaryDirectory(prefix=prefix)
