"""The parsing host: a helper process of the server that forks one limited child per file to parse.

    python -m loom.retrieval.parse_host      (started by `loom.retrieval.isolate`, never by hand)

It loads the parsers and the chunk vocabulary once, then reads jobs, one JSON object a line, on stdin:
`{"id", "path", "filename", "size", "overlap", "out", "memory_mb", "timeout_s"}` (or `{"cancel": id}`)
and answers `{"id", "code"}` on stdout when the job's child has ended (`code` as `Popen.returncode`).

Each child limits itself before touching the file: its address space (RLIMIT_AS, what it had at the
fork plus `memory_mb`), no core dumps, and an alarm after `timeout_s` (SIGALRM ends it). It parses,
chunks, writes `chunks.jsonl` and `result.json` into the job's directory, and exits. Both the host and
its children die with their parent (PR_SET_PDEATHSIG); the host signals only the children it forked,
by their pids, and reaps only those.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import resource
import select
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

EXIT_NO_MEMORY = 3
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_job(job: dict[str, Any]) -> None:
    """In the child: parse and chunk one file, write the chunks and the result."""
    from loom.retrieval.chunking import ChunkingStrategy, chunk_text
    from loom.retrieval.errors import FileProcessingError
    from loom.retrieval.parsers import parse_path

    out = Path(job["out"])
    size, overlap = int(job["size"]), int(job["overlap"])
    try:
        doc = parse_path(Path(job["path"]), str(job["filename"]))
        chunks = chunk_text(doc.text, ChunkingStrategy(size, overlap))
        text_bytes = len(doc.text.encode("utf-8"))
        kind, pages = doc.kind, doc.pages
        del doc
        with (out / "chunks.jsonl").open("w", encoding="utf-8") as f:
            for c in chunks:
                f.write(json.dumps([c.index, c.text, c.start, c.end, c.tokens], ensure_ascii=False))
                f.write("\n")
        # Tokens of the document, overlaps counted once: windows start every `size - overlap` tokens.
        tokens = (len(chunks) - 1) * (size - overlap) + chunks[-1].tokens if chunks else 0
        result: dict[str, Any] = {
            "chunks": len(chunks),
            "tokens": tokens,
            "text_bytes": text_bytes,
            "kind": kind,
            "pages": pages,
        }
    except FileProcessingError as exc:
        result = {"error": exc.code or "server_error", "message": exc.message}
    except RecursionError:
        result = {"error": "invalid_file", "message": "The file is nested too deeply to be read."}
    (out / "result.json").write_text(json.dumps(result))


def _child(job: dict[str, Any]) -> None:
    code = 1
    try:
        _die_with_parent()
        os.dup2(2, 1)  # stdout is the host's answer pipe: nothing of the child may land there
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        limit = _vm_bytes() + int(job["memory_mb"]) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.alarm(max(1, math.ceil(float(job["timeout_s"]))))
        run_job(job)
        code = 0
    except MemoryError:
        code = EXIT_NO_MEMORY
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _handle(job: dict[str, Any], children: dict[int, Any]) -> None:
    if "cancel" in job:
        for pid, job_id in children.items():
            if job_id == job["cancel"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return
    pid = os.fork()
    if pid == 0:
        _child(job)
    children[pid] = job["id"]


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's to handle
    import loom.retrieval.isolate_preload  # noqa: F401  (parsers and vocabulary, once)

    children: dict[int, Any] = {}  # pid -> job id, only children this host forked
    fd = sys.stdin.fileno()
    buffered = b""
    open_input = True
    while open_input or children:
        if open_input:
            ready, _, _ = select.select([fd], [], [], 0.02)
            if ready:
                # Raw reads with our own line buffer: a buffered reader could hold a job select cannot see.
                data = os.read(fd, 1 << 16)
                if not data:
                    open_input = False  # the server went away: end our children and leave
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                buffered += data
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    _handle(json.loads(line), children)
        else:
            select.select([], [], [], 0.02)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                job_id = children.pop(pid)
                if open_input:
                    _answer({"id": job_id, "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
