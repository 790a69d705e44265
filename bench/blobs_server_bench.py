"""File upload and download through `loom serve`: local store vs S3-compatible storage, and the server's
memory while it streams them.

    .venv/bin/python -m bench.blobs_server_bench [--sizes 10,100,300] [--repeat 3]

For each store (the local default, then `LOOM_BLOB_URL=s3://…` on a real SeaweedFS on loopback) a real
`loom serve` subprocess (SQLite) gets, for each size in MB, a file of random bytes read from disk:
`POST /v1/files` (multipart, streamed from the file by httpx) and `GET /v1/files/{id}/content` (streamed
to a file on disk, as `files.content` does with the SDK's streaming response); each ends with an fsync of
its destination. Baseline, measured in the same run: a plain copy of the same bytes to the same place
(source file -> the store's folder for the upload, the store's folder -> the client's folder for the
download, each with an fsync), with no server in between. Prints the median seconds and MB/s of each, and
the server's resident memory: before, the peak sampled during each transfer (every 5 ms) and VmHWM, the
process's high-water mark since it started. Flat means the peak does not follow the file's size: the
same for every size on the local store; on S3 it rises by the multipart buffers (part size x (parts in
flight + 1), ~40 MiB) once a file fills them, then stays (100 MB and 300 MB alike).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support.seaweed import SeaweedS3
from tests.support.server import LoomServer

MB = 1024 * 1024
KEY = "sk-bench"


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(name)


@dataclass
class Peak:
    """The largest VmRSS of `pid` seen while the block ran, sampled in a thread."""

    pid: int
    kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def watching(self) -> Iterator[None]:
        self._stop.clear()

        def sample() -> None:
            while not self._stop.is_set():
                self.kib = max(self.kib, _status_kib(self.pid, "VmRSS"))
                self._stop.wait(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()


def fsync_path(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def plain_copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fsync_path(dst)


def upload(client: httpx.Client, src: Path) -> str:
    with src.open("rb") as f:
        response = client.post("/files", files={"file": (src.name, f)}, data={"purpose": "assistants"})
    response.raise_for_status()
    file_id: str = response.json()["id"]
    return file_id


def download(client: httpx.Client, file_id: str, dst: Path, size: int) -> None:
    with client.stream("GET", f"/files/{file_id}/content") as response, dst.open("wb") as out:
        response.raise_for_status()
        for chunk in response.iter_bytes(MB):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    assert dst.stat().st_size == size


def median_s(repeat: int, run: Callable[[int], object]) -> float:
    times = []
    for i in range(repeat):
        started = time.perf_counter()
        run(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@dataclass
class Row:
    store: str
    mb: int
    op: str
    seconds: float
    baseline_s: float
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    hwm_kib: int = 0


def measure_size(
    name: str, client: httpx.Client, pid: int, place: Path, src: Path, work: Path, repeat: int
) -> list[Row]:
    mb = round(src.stat().st_size / MB)
    size = src.stat().st_size
    plain_up = [place / f"plain-{mb}-{i}" for i in range(repeat)]
    plain_down = [work / f"plain-{mb}-{i}" for i in range(repeat)]
    up_base = median_s(repeat, lambda i: plain_copy(src, plain_up[i]))
    down_base = median_s(repeat, lambda i: plain_copy(plain_up[i], plain_down[i]))
    for path in plain_up + plain_down:
        path.unlink()
    ids: list[str] = []
    rows = []
    before = _status_kib(pid, "VmRSS")
    peak = Peak(pid)
    with peak.watching():
        up = median_s(repeat, lambda i: ids.append(upload(client, src)))
    rows.append(Row(name, mb, "upload", up, up_base, before, peak.kib, _status_kib(pid, "VmHWM")))
    downloaded = [work / f"down-{mb}-{i}" for i in range(repeat)]
    before = _status_kib(pid, "VmRSS")
    peak = Peak(pid)
    with peak.watching():
        down = median_s(repeat, lambda i: download(client, ids[i], downloaded[i], size))
    rows.append(Row(name, mb, "download", down, down_base, before, peak.kib, _status_kib(pid, "VmHWM")))
    for file_id, path in zip(ids, downloaded, strict=True):
        client.delete(f"/files/{file_id}").raise_for_status()
        path.unlink()
    return rows


def measure(name: str, server: LoomServer, place: Path, sources: list[Path], work: Path, repeat: int) -> list[Row]:
    """Rows of one store; `place` is the folder its bytes end up in (for the plain copy beside it)."""
    assert server.proc is not None
    pid = server.proc.pid
    rows: list[Row] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=600) as client:
        upload(client, sources[0])  # warm: first-request imports are not the transfer's memory
        for src in sources:
            rows += measure_size(name, client, pid, place, src, work, repeat)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10,100,300", help="file sizes in MB, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="loom-blobs-server-bench-"))
    sources = [work / f"source-{mb}.bin" for mb in sizes]
    for mb, source in zip(sizes, sources, strict=True):
        with source.open("wb") as out:
            for _ in range(mb):
                out.write(os.urandom(MB))
    rows: list[Row] = []
    try:
        with LoomServer(api_keys=(KEY,)) as local:
            rows += measure("local", local, local.data_dir / "files", sources, work, args.repeat)
        with SeaweedS3() as s3:
            env = {"LOOM_BLOB_URL": s3.url("bench"), **s3.env}
            with LoomServer(api_keys=(KEY,), extra_env=env) as server:
                rows += measure("s3 (SeaweedFS, loopback)", server, s3.dir, sources, work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian of {args.repeat}; RSS of the `loom serve` process in MiB")
    print(
        f"{'store':26} {'MB':>4} {'op':8} {'seconds':>8} {'MB/s':>7} {'plain copy s':>12} {'x plain':>8} "
        f"{'RSS before':>10} {'RSS peak':>9} {'VmHWM':>6}"
    )
    for r in rows:
        print(
            f"{r.store:26} {r.mb:4} {r.op:8} {r.seconds:8.3f} {r.mb / r.seconds:7.0f} {r.baseline_s:12.3f} "
            f"{r.seconds / r.baseline_s:8.1f} {r.rss_before_kib / 1024:10.0f} {r.rss_peak_kib / 1024:9.0f} "
            f"{r.hwm_kib / 1024:6.0f}"
        )


if __name__ == "__main__":
    main()
