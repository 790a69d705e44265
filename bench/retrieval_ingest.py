"""Ingestion throughput with the bundled embedder: chunks/s, MB/s of extracted text, PDF pages/s.

    .venv/bin/python bench/retrieval_ingest.py [--postgres] [--embedder wordllama,minilm] [--files N]

Documents are built in the run from SciFact abstracts (read from ../shared/data/ir/scifact, never
copied): plain-text files of ~200 KB and a multi-page PDF (reportlab). Each file goes through
`ingest_file` (parse → chunk → embed → index) into SQLite (and PostgreSQL with --postgres).
Baseline printed alongside: the same work without the index write (parse + chunk + embed only).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from loom.retrieval.chunking import chunk_text  # noqa: E402
from loom.retrieval.embedding import Embedder, WordLlamaEmbedder  # noqa: E402
from loom.retrieval.index import ChunkIndex  # noqa: E402
from loom.retrieval.ingest import ingest_file  # noqa: E402
from loom.retrieval.parsers import parse_file  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ir" / "scifact"


def abstracts() -> list[str]:
    with open(DATA / "corpus.jsonl") as f:
        return [(d["title"] + "\n" + d["text"]) for d in map(json.loads, f)]


def text_files(docs: list[str], n_files: int, size: int) -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    buf: list[str] = []
    i = 0
    while len(files) < n_files:
        buf.append(docs[i % len(docs)])
        i += 1
        if sum(map(len, buf)) >= size:
            files.append((f"doc{len(files)}.txt", "\n\n".join(buf).encode()))
            buf = []
    return files


def pdf_file(docs: list[str], pages: int) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate

    out = io.BytesIO()
    style = getSampleStyleSheet()["BodyText"]
    story = []
    for p in range(pages):
        story.append(Paragraph(docs[(2 * p) % len(docs)][:1800], style))
        story.append(Paragraph(docs[(2 * p + 1) % len(docs)][:1800], style))
        story.append(PageBreak())
    SimpleDocTemplate(out, pagesize=A4).build(story)
    return out.getvalue()


async def baseline(embedder: Embedder, files: list[tuple[str, bytes]]) -> float:
    start = time.perf_counter()
    for name, data in files:
        doc = await asyncio.to_thread(parse_file, data, name)
        chunks = await asyncio.to_thread(chunk_text, doc.text)
        await embedder.embed([c.text for c in chunks])
    return time.perf_counter() - start


async def run(index: ChunkIndex, embedder: Embedder, label: str, files: list[tuple[str, bytes]]) -> None:
    start = time.perf_counter()
    chunks = text_bytes = pages = 0
    for i, (name, data) in enumerate(files):
        r = await ingest_file(
            index, embedder, vector_store_id=f"vs_{label}", file_id=f"file-{i}", filename=name, data=data
        )
        chunks += r.chunks
        text_bytes += r.text_bytes
        pages += r.pages or 0
    s = time.perf_counter() - start
    line = f"{label:<22} {len(files):>5} {chunks:>7} {s:7.2f}s {chunks / s:9.0f} {text_bytes / s / 1e6:8.2f}"
    print(line + (f" {pages / s:9.1f}" if pages else f" {'-':>9}"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--embedder", default="wordllama", help="comma-separated: wordllama, minilm")
    parser.add_argument("--files", type=int, default=20, help="~200 KB text files (fewer for slow embedders)")
    parser.add_argument("--pdf-pages", type=int, default=100)
    args = parser.parse_args()
    docs = abstracts()
    txt = text_files(docs, args.files, 200_000)
    pdf = [("report.pdf", pdf_file(docs, args.pdf_pages))]
    for name in args.embedder.split(","):
        await measure(name, txt, pdf, args.postgres)


async def measure(name: str, txt: list[tuple[str, bytes]], pdf: list[tuple[str, bytes]], postgres: bool) -> None:
    embedder: Embedder
    if name == "minilm":
        from loom.retrieval.minilm import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    else:
        embedder = WordLlamaEmbedder()
    await embedder.embed(["warm up"])
    print(f"\nauto chunking (800/400 tokens), {embedder.name} ({embedder.dimensions}-d embeddings)")
    print(f"{'workload':<22} {'files':>5} {'chunks':>7} {'time':>8} {'chunks/s':>9} {'MB/s':>8} {'pages/s':>9}")
    for label, files in (("txt", txt), ("pdf", pdf)):
        s = await baseline(embedder, files)
        mb = sum(len(parse_file(d, n).text.encode()) for n, d in files) / 1e6
        print(f"{label + ' no index (base)':<22} {len(files):>5} {'':>7} {s:7.2f}s {'':>9} {mb / s:8.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        from loom.retrieval.sqlite_index import SQLiteChunkIndex

        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp}/ingest.db")
        index = SQLiteChunkIndex(engine)
        await index.create_schema()
        await run(index, embedder, "sqlite txt", txt)
        await run(index, embedder, "sqlite pdf", pdf)
        await engine.dispose()
    if postgres:
        from tests.support.postgres import new_database

        from loom.retrieval.pg_index import PostgresChunkIndex

        engine = create_async_engine(new_database("ingest"))
        pg = PostgresChunkIndex(engine, embedder.dimensions)
        await pg.create_schema()
        await run(pg, embedder, "postgres txt", txt)
        await run(pg, embedder, "postgres pdf", pdf)
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
