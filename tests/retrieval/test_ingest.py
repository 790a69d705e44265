"""Ingestion end to end (parse → chunk → embed → index) and the OpenAI-compatible embedder."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from openai import AsyncOpenAI
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from loom.config import Settings
from loom.retrieval.chunking import ChunkingStrategy
from loom.retrieval.embedding import OpenAIEmbedder, WordLlamaEmbedder, embedder_from_settings
from loom.retrieval.errors import IndexingFailed, InvalidFile, UnsupportedFile
from loom.retrieval.index import ChunkIndex
from loom.retrieval.ingest import ingest_file
from loom.retrieval.minilm import MiniLMEmbedder
from loom.retrieval.search import search
from tests.retrieval.files import docx_bytes, pdf_bytes, pptx_bytes
from tests.support.postgres import new_database


async def test_ingest_office_and_pdf(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    files = {
        "file-pdf": ("manual.pdf", pdf_bytes(["Installing the turbine.", "Maintenance of the hydraulic pump."])),
        "file-docx": ("memo.docx", docx_bytes(["The cafeteria closes early on Fridays."])),
        "file-pptx": ("deck.pptx", pptx_bytes([("Hiring", "We are hiring three welders in March")])),
    }
    for file_id, (name, data) in files.items():
        result = await ingest_file(index, embedder, vector_store_id="vs_i", file_id=file_id, filename=name, data=data)
        assert result.chunks == 1
        assert result.tokens > 0
        assert result.text_bytes > 0
    assert (await search(index, embedder, ["vs_i"], "hydraulic pump maintenance"))[0].file_id == "file-pdf"
    assert (await search(index, embedder, ["vs_i"], "when does the cafeteria close"))[0].file_id == "file-docx"
    assert (await search(index, embedder, ["vs_i"], "welders hiring"))[0].file_id == "file-pptx"


async def test_ingest_counts_and_reingest_replaces(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    text = " ".join(f"sentence number {i} about rivers." for i in range(600))
    strategy = ChunkingStrategy(200, 100)
    first = await ingest_file(
        index,
        embedder,
        vector_store_id="vs_c",
        file_id="file-r",
        filename="r.txt",
        data=text.encode(),
        chunking=strategy,
    )
    assert first.kind == "text"
    assert first.text_bytes == len(text.encode())
    assert first.tokens >= 200 * 3
    assert first.chunks == -(-(first.tokens - 200) // 100) + 1
    assert len(await index.file_chunks("vs_c", "file-r")) == first.chunks
    # Ingesting the same file again replaces its chunks instead of duplicating them.
    second = await ingest_file(
        index, embedder, vector_store_id="vs_c", file_id="file-r", filename="r.txt", data=b"Now it is short."
    )
    assert second.chunks == 1
    chunks = await index.file_chunks("vs_c", "file-r")
    assert [c.text for c in chunks] == ["Now it is short."]


async def test_ingest_errors(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    with pytest.raises(UnsupportedFile) as unsupported:
        await ingest_file(index, embedder, vector_store_id="vs_e", file_id="f1", filename="x.png", data=b"\x89PNG\r\n")
    assert unsupported.value.code == "unsupported_file"
    with pytest.raises(InvalidFile) as invalid:
        await ingest_file(
            index, embedder, vector_store_id="vs_e", file_id="f2", filename="x.pdf", data=b"%PDF-1.4 broken"
        )
    assert invalid.value.code == "invalid_file"
    with pytest.raises(InvalidFile) as encrypted:
        await ingest_file(
            index, embedder, vector_store_id="vs_e", file_id="f3", filename="x.pdf", data=pdf_bytes(["s"], "pw")
        )
    assert "encrypted" in encrypted.value.message
    assert await index.list_files(["vs_e"]) == []


def _fake_embeddings_upstream(dims: int, calls: list[dict[str, object]], fail: bool = False) -> AsyncOpenAI:
    """A scripted OpenAI-compatible /v1/embeddings upstream (the only thing tests may fake)."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body)
        if fail:
            return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})
        data = []
        for i, text in enumerate(body["input"]):
            rng = np.random.default_rng(sum(map(ord, text)))
            data.append({"object": "embedding", "index": i, "embedding": rng.normal(size=dims).tolist()})
        data.reverse()  # servers may answer out of order; `index` says which is which
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            },
        )

    return AsyncOpenAI(
        base_url="http://upstream.test/v1",
        api_key="sk-x",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )


async def test_openai_embedder() -> None:
    calls: list[dict[str, object]] = []
    emb = OpenAIEmbedder(
        base_url="unused",
        api_key="unused",
        model="my-embedder",
        batch_size=2,
        client=_fake_embeddings_upstream(8, calls),
    )
    assert emb.dimensions == 0
    vectors = await emb.embed(["a", "bb", "ccc"])
    assert vectors.shape == (3, 8)
    assert emb.dimensions == 8
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert [c["input"] for c in calls] == [["a", "bb"], ["ccc"]]
    assert all(c["model"] == "my-embedder" and "dimensions" not in c for c in calls)
    again = await emb.embed(["ccc"])
    assert np.allclose(again[0], vectors[2])


async def test_openai_embedder_failure_is_server_error(tmp_path: Path) -> None:
    emb = OpenAIEmbedder(base_url="u", api_key="k", model="m", client=_fake_embeddings_upstream(8, [], fail=True))
    with pytest.raises(IndexingFailed) as exc:
        await emb.embed(["x"])
    assert exc.value.code == "server_error"
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}")
    from loom.retrieval.sqlite_index import SQLiteChunkIndex

    idx = SQLiteChunkIndex(engine)
    await idx.create_schema()
    with pytest.raises(IndexingFailed):
        await ingest_file(idx, emb, vector_store_id="vs", file_id="f", filename="a.txt", data=b"hello")
    await engine.dispose()


async def test_embedder_from_settings() -> None:
    assert isinstance(embedder_from_settings(Settings()), MiniLMEmbedder)  # the default
    assert isinstance(embedder_from_settings(Settings(embedding_provider="wordllama")), WordLlamaEmbedder)
    remote = embedder_from_settings(
        Settings(
            embedding_provider="openai", embedding_base_url="http://e/v1", embedding_model="text-embedding-3-large"
        )
    )
    assert isinstance(remote, OpenAIEmbedder)
    assert remote.dimensions == 3072
    with pytest.raises(ValueError):
        embedder_from_settings(Settings(embedding_provider="nope"))


async def test_wordllama_is_offline_and_normalised(embedder: WordLlamaEmbedder) -> None:
    vectors = await embedder.embed(["a cat", "a dog", ""])
    assert vectors.shape == (3, 256)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0)
    same = await embedder.embed(["a dog"])
    assert np.allclose(same[0], vectors[1], atol=1e-6)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_migration_0002_creates_and_drops_tables(backend: str, tmp_path: Path) -> None:
    import importlib.util

    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    path = Path(__file__).resolve().parents[2] / "src/loom/store/migrations/versions/0002_retrieval.py"
    spec = importlib.util.spec_from_file_location("rev0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (module.revision, module.down_revision) == ("0002", "0001")

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}" if backend == "sqlite" else new_database("mig")
    engine = create_async_engine(url)

    def run(sync_conn: object, step: str) -> set[str]:
        ctx = MigrationContext.configure(sync_conn)  # type: ignore[arg-type]
        with Operations.context(ctx):
            getattr(module, step)()
        return set(inspect(sync_conn).get_table_names())

    async with engine.begin() as conn:
        tables = await conn.run_sync(run, "upgrade")
    assert {"retrieval_chunks", "retrieval_files"} <= tables
    async with engine.begin() as conn:
        tables = await conn.run_sync(run, "downgrade")
    assert not {"retrieval_chunks", "retrieval_files"} & tables
    await engine.dispose()
