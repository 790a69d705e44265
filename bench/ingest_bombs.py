"""Server memory and /health latency while ingesting hostile files into a vector store.

    .venv/bin/python bench/ingest_bombs.py [--only text200,docxbomb,deepjson,pdf10k] [--limit-gb 8]

Each case starts a fresh `loom serve` (SQLite), uploads one file, attaches it to a vector store and
samples, every 20 ms until the file settles: the server's RSS (peak, and growth over its RSS before
the upload), the peak RSS of its descendants (parser children), and the slowest `/health` answer.
A watchdog kills the server (its own pid, which this script started) once its RSS passes `--limit-gb`,
so a bomb cannot take the machine; that case is then reported as "killed at N GB after S s".

Cases:
  text200   a 200 MB text file that is one line (words, no newline)
  docxbomb  a ~300 KB DOCX whose word/document.xml inflates to ~100 MB
  deepjson  a JSON file nested 100,000 levels deep
  pdf10k    a 10,000-page PDF (one short line a page): /health latency while it parses

BASELINE holds what the same cases measured on the code before the ingestion hardening (branch
h-ingest's parent, b13ff01) on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
import openai  # noqa: E402
from tests.support.server import LoomServer  # noqa: E402

KEY = "sk-test-default"

# Measured on b13ff01 (before the hardening) on the shared 2-core machine, --timeout-s 240.
BASELINE: dict[str, str] = {
    "text200": "still in_progress after 240 s; server peak 7.08 GB (+6.96 GB), slowest /health 2.57 s",
    "docxbomb": "still in_progress after 240 s; server peak 2.29 GB (+2.16 GB), slowest /health 3.31 s",
    "deepjson": "failed server_error after 0.3 s (RecursionError in the server)",
    "pdf10k": "completed after 12.7 s; server peak 0.54 GB (+0.41 GB), slowest /health 0.49 s",
}


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
        out.extend(kids)
        todo.extend(kids)
    return out


@dataclass
class Sample:
    base_kb: int = 0
    peak_kb: int = 0
    child_peak_kb: int = 0
    slowest_health_s: float = 0.0
    killed_after_s: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)


def watch(server: LoomServer, sample: Sample, limit_kb: int, started: float) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    while not sample.stop.is_set():
        kb = rss_kb(pid)
        sample.peak_kb = max(sample.peak_kb, kb)
        kids = sum(rss_kb(k) for k in descendants(pid) if k != pid)
        sample.child_peak_kb = max(sample.child_peak_kb, kids)
        if kb > limit_kb and server.proc.poll() is None:
            server.kill()  # our own server process, by its pid
            sample.killed_after_s = time.monotonic() - started
            return
        time.sleep(0.02)


def ping(server: LoomServer, sample: Sample) -> None:
    with httpx.Client(timeout=30) as http:
        while not sample.stop.is_set():
            t0 = time.monotonic()
            try:
                http.get(f"http://127.0.0.1:{server.port}/health")
            except httpx.HTTPError:
                return
            sample.slowest_health_s = max(sample.slowest_health_s, time.monotonic() - t0)
            time.sleep(0.05)


def text200(path: Path) -> Path:
    out = path / "line.txt"
    words = b"alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november " * 16
    with out.open("wb") as f:
        for _ in range(200 * 1024 * 1024 // len(words)):
            f.write(words)
    return out


def docx_bomb(path: Path, xml_mb: int = 100) -> Path:
    """A real DOCX (python-docx's template) whose document.xml is ~xml_mb MB of tiny paragraphs."""
    import docx

    buf = io.BytesIO()
    docx.Document().save(buf)
    out = path / "bomb.docx"
    para = b"<w:p><w:r><w:t>boom</w:t></w:r></w:p>"
    head = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w='
        b'"http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
    )
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info, src.read(info.filename), zipfile.ZIP_DEFLATED)
                continue
            with dst.open(zipfile.ZipInfo("word/document.xml", date_time=info.date_time), "w", force_zip64=True) as w:
                w.write(head)
                block = para * 10_000
                for _ in range(xml_mb * 1024 * 1024 // len(block)):
                    w.write(block)
                w.write(b"</w:body></w:document>")
    # ZipFile.open(..., "w") stores; recompress every member with DEFLATE level 9.
    packed = path / "bomb-packed.docx"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            with src.open(info) as r, dst.open(info.filename, "w", force_zip64=True) as w:
                while block := r.read(1 << 20):
                    w.write(block)
    out.unlink()
    return packed


def deep_json(path: Path) -> Path:
    out = path / "deep.json"
    out.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    return out


def pdf10k(path: Path) -> Path:
    from reportlab.pdfgen import canvas

    out = path / "big.pdf"
    c = canvas.Canvas(str(out))
    for i in range(10_000):
        c.drawString(72, 800, f"Page {i}: the ledger of shipment {i * 7919 % 104729} for warehouse {i % 97}.")
        c.showPage()
    c.save()
    return out


CASES = {"text200": text200, "docxbomb": docx_bomb, "deepjson": deep_json, "pdf10k": pdf10k}


def run_case(name: str, file: Path, limit_gb: float, timeout_s: float) -> str:
    with tempfile.TemporaryDirectory(prefix="loom-bomb-") as data_dir:
        server = LoomServer(data_dir=Path(data_dir), extra_env={"LOOM_UPSTREAM_MAX_RETRIES": "0"}).start()
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=600)
            with file.open("rb") as f:
                uploaded = client.files.create(file=(file.name, f), purpose="assistants")
            vs = client.vector_stores.create(name=name)
            assert server.proc is not None
            sample = Sample(base_kb=rss_kb(server.proc.pid))
            started = time.monotonic()
            threads = [
                threading.Thread(target=watch, args=(server, sample, int(limit_gb * 1024 * 1024), started)),
                threading.Thread(target=ping, args=(server, sample)),
            ]
            for t in threads:
                t.start()
            client.vector_stores.files.create(vector_store_id=vs.id, file_id=uploaded.id)
            outcome = "timed out"
            while time.monotonic() - started < timeout_s:
                if sample.killed_after_s is not None:
                    break
                try:
                    vf = client.vector_stores.files.retrieve(file_id=uploaded.id, vector_store_id=vs.id)
                except openai.APIConnectionError:
                    outcome = "server died"
                    break
                if vf.status != "in_progress":
                    err = f" {vf.last_error.code}: {vf.last_error.message}" if vf.last_error else ""
                    outcome = f"{vf.status}{err}"
                    break
                time.sleep(0.2)
            took = time.monotonic() - started
            sample.stop.set()
            for t in threads:
                t.join()
            alive = server.proc.poll() is None
            if sample.killed_after_s is not None:
                return f"server killed at {limit_gb:.1f} GB after {sample.killed_after_s:.1f} s (watchdog)"
            gb = 1024 * 1024
            return (
                f"{outcome[:160]} after {took:.1f} s; server peak {sample.peak_kb / gb:.2f} GB "
                f"(+{(sample.peak_kb - sample.base_kb) / gb:.2f} GB), parser children peak "
                f"{sample.child_peak_kb / gb:.2f} GB, slowest /health {sample.slowest_health_s:.2f} s, "
                f"server {'alive' if alive else 'DEAD'}"
            )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--limit-gb", type=float, default=8.0)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loom-bomb-files-") as tmp:
        for name in args.only.split(","):
            file = CASES[name](Path(tmp))
            size = os.path.getsize(file)
            print(f"{name} ({size / 1e6:.1f} MB file)", flush=True)
            print(f"  now:      {run_case(name, file, args.limit_gb, args.timeout_s)}", flush=True)
            print(f"  baseline: {BASELINE[name]}", flush=True)
            file.unlink()


if __name__ == "__main__":
    main()
