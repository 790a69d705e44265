"""Hostile files fail alone: the server stays up, small, responsive, and the store keeps working.

Each bomb goes through a real server; while it ingests, a thread samples the server's RSS (its own
process: parsing happens in children of its parse host, which have their own limits).
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai

from tests.conftest import sdk_client
from tests.retrieval.files import docx_bytes, pdf_bytes
from tests.support.server import LoomServer
from tests.support.wait import wait_for
from tests.vector_stores.conftest import ENV

GB_KB = 1024 * 1024


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@contextmanager
def peak_rss(server: LoomServer) -> Iterator[dict[str, int]]:
    """Samples the server's RSS every 20 ms; yields {"base", "peak"} in KiB (filled when the block ends)."""
    assert server.proc is not None
    pid = server.proc.pid
    out = {"base": _rss_kb(pid), "peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak"] = max(out["peak"], _rss_kb(pid))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def settle(client: openai.OpenAI, store_id: str, file_id: str, timeout: float = 120) -> object:
    def done() -> object:
        vf = client.vector_stores.files.retrieve(file_id=file_id, vector_store_id=store_id)
        return vf if vf.status != "in_progress" else None

    return wait_for(done, timeout=timeout, what=f"{file_id} to settle")


def assert_store_still_works(server: LoomServer, client: openai.OpenAI, store_id: str) -> None:
    """The server answers, and a normal file added after the bomb is indexed and found."""
    assert server.proc is not None and server.proc.poll() is None
    assert httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5).status_code == 200
    ok = client.files.create(
        file=("after.docx", docx_bytes(["The heliograph signals the lighthouse keeper at dawn."])), purpose="assistants"
    )
    client.vector_stores.files.create(vector_store_id=store_id, file_id=ok.id)
    vf = settle(client, store_id, ok.id)
    assert vf.status == "completed", vf.last_error  # type: ignore[attr-defined]
    hits = client.vector_stores.search(store_id, query="heliograph lighthouse keeper").data
    assert hits and hits[0].file_id == ok.id


def single_line(megabytes: int) -> bytes:
    words = b"alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november " * 64
    return words * (megabytes * 1024 * 1024 // len(words))


def docx_bomb(xml_mb: int = 100) -> bytes:
    """A real DOCX whose word/document.xml inflates to ~xml_mb MB (~300 KB packed)."""
    base = zipfile.ZipFile(io.BytesIO(docx_bytes(["template"])))
    out = io.BytesIO()
    head = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w='
        b'"http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
    )
    block = b"<w:p><w:r><w:t>boom</w:t></w:r></w:p>" * 10_000
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in base.infolist():
            if info.filename != "word/document.xml":
                dst.writestr(info.filename, base.read(info.filename))
                continue
            with dst.open("word/document.xml", "w", force_zip64=True) as w:
                w.write(head)
                for _ in range(xml_mb * 1024 * 1024 // len(block)):
                    w.write(block)
                w.write(b"</w:body></w:document>")
    return out.getvalue()


def test_single_line_text_past_the_token_cap_fails_alone(vs_server: LoomServer, client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="line bomb")
    data = single_line(48)  # one 48 MB line: ~8,000,000 tokens
    assert b"\n" not in data
    bomb = client.files.create(file=("line.txt", data), purpose="assistants")
    del data
    with peak_rss(vs_server) as rss:
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=bomb.id)
        vf = settle(client, vs.id, bomb.id)
    assert vf.status == "failed"  # type: ignore[attr-defined]
    assert vf.last_error.code == "invalid_file"  # type: ignore[attr-defined]
    assert "5,000,000 tokens" in vf.last_error.message  # type: ignore[attr-defined]
    assert rss["peak"] - rss["base"] < GB_KB, rss
    assert_store_still_works(vs_server, client, vs.id)


def test_docx_zip_bomb_fails_before_inflating(vs_server: LoomServer, client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="docx bomb")
    data = docx_bomb(100)
    assert len(data) < 1024 * 1024
    bomb = client.files.create(file=("bomb.docx", data), purpose="assistants")
    with peak_rss(vs_server) as rss:
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=bomb.id)
        vf = settle(client, vs.id, bomb.id)
    assert vf.status == "failed"  # type: ignore[attr-defined]
    assert vf.last_error.code == "invalid_file"  # type: ignore[attr-defined]
    assert "zip bomb" in vf.last_error.message  # type: ignore[attr-defined]
    assert rss["peak"] - rss["base"] < GB_KB, rss
    store = client.vector_stores.retrieve(vs.id)
    assert store.file_counts.failed == 1 and store.usage_bytes == 0
    assert_store_still_works(vs_server, client, vs.id)


def test_json_nested_100k_deep_is_invalid_file(vs_server: LoomServer, client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="deep json")
    deep = client.files.create(file=("deep.json", b"[" * 100_000 + b"]" * 100_000), purpose="assistants")
    client.vector_stores.files.create(vector_store_id=vs.id, file_id=deep.id)
    vf = settle(client, vs.id, deep.id)
    assert vf.status == "failed"  # type: ignore[attr-defined]
    assert vf.last_error.code == "invalid_file", vf.last_error  # type: ignore[attr-defined]
    assert "nested too deeply" in vf.last_error.message  # type: ignore[attr-defined]
    assert_store_still_works(vs_server, client, vs.id)


def test_parser_out_of_memory_fails_the_file_not_the_server() -> None:
    """Past the parsing child's memory limit (an HTML page of 3,000,000 tags), the file fails alone."""
    with LoomServer(extra_env={**ENV, "LOOM_INGEST_MEMORY_MB": "256"}) as server:
        client = sdk_client(server)
        vs = client.vector_stores.create(name="memory")
        html = b"<html><body>" + b"<p><b>x</b></p>" * 3_000_000 + b"</body></html>"
        page = client.files.create(file=("tags.html", html), purpose="assistants")
        with peak_rss(server) as rss:
            client.vector_stores.files.create(vector_store_id=vs.id, file_id=page.id)
            vf = settle(client, vs.id, page.id)
        assert vf.status == "failed" and vf.last_error.code == "invalid_file", vf  # type: ignore[attr-defined]
        assert "more than 256 MB of memory" in vf.last_error.message  # type: ignore[attr-defined]
        assert rss["peak"] - rss["base"] < GB_KB, rss
        assert_store_still_works(server, client, vs.id)


def test_parser_out_of_time_fails_the_file_not_the_server() -> None:
    """Past the parsing child's time limit (a 4,000-page PDF under a 1 s limit), the file fails alone."""
    with LoomServer(extra_env={**ENV, "LOOM_INGEST_TIMEOUT_S": "1"}) as server:
        client = sdk_client(server)
        vs = client.vector_stores.create(name="time")
        pdf = pdf_bytes([f"Page {i} of the ledger." for i in range(4000)])
        slow = client.files.create(file=("ledger.pdf", pdf), purpose="assistants")
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=slow.id)
        vf = settle(client, vs.id, slow.id)
        assert vf.status == "failed" and vf.last_error.code == "invalid_file", vf  # type: ignore[attr-defined]
        assert "within 1 seconds" in vf.last_error.message  # type: ignore[attr-defined]
        assert_store_still_works(server, client, vs.id)
