"""Hybrid search against the real databases (each test runs on SQLite and on PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from loom.errors import InvalidRequest
from loom.retrieval.embedding import Vectors, WordLlamaEmbedder
from loom.retrieval.index import Candidate, ChunkIndex
from loom.retrieval.ingest import ingest_file
from loom.retrieval.search import search

DOCS = {
    "file-photo": ("plants.md", "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose."),
    "file-bank": ("rates.txt", "The central bank raised interest rates again to bring inflation under control."),
    "file-volcano": ("geo.txt", "Magma rises through the crust and erupts from volcanoes as lava and ash."),
    "file-chess": ("games.txt", "In chess, castling moves the king two squares towards a rook."),
    "file-whale": ("ocean.txt", "Blue whales are the largest animals ever known to have lived on Earth."),
}
ATTRS = {
    "file-photo": {"topic": "biology", "year": 2020, "public": True},
    "file-bank": {"topic": "economics", "year": 2023, "public": False},
    "file-volcano": {"topic": "geology", "year": 2019, "public": True},
    "file-chess": {"topic": "games", "year": 2023, "public": True},
    "file-whale": {"topic": "biology", "year": 2024, "public": False},
}


async def _fill(index: ChunkIndex, embedder: WordLlamaEmbedder, store: str = "vs_a") -> None:
    for file_id, (name, text) in DOCS.items():
        await ingest_file(
            index,
            embedder,
            vector_store_id=store,
            file_id=file_id,
            filename=name,
            data=text.encode(),
            attributes=ATTRS[file_id],
        )


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
async def test_finds_the_right_chunk(index: ChunkIndex, embedder: WordLlamaEmbedder, mode: str) -> None:
    await _fill(index, embedder)
    cases = {
        "how do plants make sugar from sunlight": "file-photo",
        "why did the central bank raise interest rates": "file-bank",
        "volcano eruption lava": "file-volcano",
        "chess castling king rook": "file-chess",
    }
    for query, expected in cases.items():
        results = await search(index, embedder, ["vs_a"], query, mode=mode)  # type: ignore[arg-type]
        assert results, query
        assert results[0].file_id == expected, (query, [(r.file_id, r.score) for r in results])
        top = results[0]
        assert top.filename == DOCS[expected][0]
        assert top.text == DOCS[expected][1]
        assert top.attributes == ATTRS[expected]
        assert all(0.0 <= r.score <= 1.0 for r in results)
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


async def test_wire_shape(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    await _fill(index, embedder)
    [first, *_] = await search(index, embedder, ["vs_a"], "blue whale")
    assert first.to_wire() == {
        "file_id": "file-whale",
        "filename": "ocean.txt",
        "score": first.score,
        "attributes": ATTRS["file-whale"],
        "content": [{"type": "text", "text": DOCS["file-whale"][1]}],
    }


async def test_max_num_results_and_threshold(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    await _fill(index, embedder)
    query = "plants whales volcanoes chess banks"
    everything = await search(index, embedder, ["vs_a"], query, max_num_results=50)
    assert len(everything) == 5
    assert len(await search(index, embedder, ["vs_a"], query, max_num_results=2)) == 2
    cut = sorted(r.score for r in everything)[2]
    kept = await search(index, embedder, ["vs_a"], query, max_num_results=50, score_threshold=cut)
    assert kept
    assert all(r.score >= cut for r in kept)
    assert len(kept) < len(everything)
    with pytest.raises(InvalidRequest):
        await search(index, embedder, ["vs_a"], query, max_num_results=51)
    with pytest.raises(InvalidRequest):
        await search(index, embedder, ["vs_a"], query, score_threshold=1.5)


async def test_filters(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    await _fill(index, embedder)
    query = "animals plants lava chess inflation"

    async def ids(flt: dict[str, object]) -> set[str]:
        return {r.file_id for r in await search(index, embedder, ["vs_a"], query, filters=flt, max_num_results=50)}

    assert await ids({"type": "eq", "key": "topic", "value": "biology"}) == {"file-photo", "file-whale"}
    assert await ids({"type": "gte", "key": "year", "value": 2023}) == {"file-bank", "file-chess", "file-whale"}
    assert await ids({"type": "in", "key": "topic", "value": ["geology", "games"]}) == {"file-volcano", "file-chess"}
    assert await ids({"type": "ne", "key": "public", "value": True}) == {"file-bank", "file-whale"}
    assert await ids(
        {
            "type": "and",
            "filters": [
                {"type": "eq", "key": "public", "value": True},
                {
                    "type": "or",
                    "filters": [{"key": "topic", "value": "biology"}, {"type": "lt", "key": "year", "value": 2020}],
                },
            ],
        }
    ) == {"file-photo", "file-volcano"}
    assert await ids({"type": "eq", "key": "topic", "value": "astronomy"}) == set()

    # Attributes are updatable and filters see the new values.
    await index.set_attributes("vs_a", "file-chess", {"topic": "biology"})
    assert await ids({"type": "eq", "key": "topic", "value": "biology"}) == {"file-photo", "file-whale", "file-chess"}


async def test_multiple_queries(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    await _fill(index, embedder)
    results = await search(index, embedder, ["vs_a"], ["blue whale", "volcano lava"], max_num_results=2)
    assert {r.file_id for r in results} == {"file-whale", "file-volcano"}


async def test_deletion_and_store_isolation(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    await _fill(index, embedder, "vs_a")
    await _fill(index, embedder, "vs_b")
    assert (await search(index, embedder, ["vs_a"], "blue whales"))[0].file_id == "file-whale"

    removed = await index.delete_file("vs_a", "file-whale")
    assert removed == 1
    assert all(r.file_id != "file-whale" for r in await search(index, embedder, ["vs_a"], "blue whales"))
    assert await index.file_chunks("vs_a", "file-whale") == []
    # The same file in another store is untouched.
    in_b = await search(index, embedder, ["vs_b"], "blue whales")
    assert in_b[0].file_id == "file-whale"
    assert in_b[0].vector_store_id == "vs_b"

    assert await index.delete_store("vs_b") == 5
    assert await search(index, embedder, ["vs_b"], "blue whales") == []
    assert len(await index.list_files(["vs_a"])) == 4
    assert await index.list_files(["vs_b"]) == []


async def test_search_across_stores(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    await ingest_file(
        index,
        embedder,
        vector_store_id="vs_x",
        file_id="file-1",
        filename="a.txt",
        data=b"Penguins live in Antarctica.",
    )
    await ingest_file(
        index,
        embedder,
        vector_store_id="vs_y",
        file_id="file-2",
        filename="b.txt",
        data=b"Camels cross the Sahara desert.",
    )
    results = await search(index, embedder, ["vs_x", "vs_y"], ["penguins", "camels desert"])
    assert {r.file_id for r in results} == {"file-1", "file-2"}
    assert {r.file_id for r in await search(index, embedder, ["vs_y"], ["penguins", "camels"])} == {"file-2"}


async def test_long_document_chunk_positions(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    filler = " ".join(f"Paragraph {i} talks about nothing in particular." for i in range(400))
    needle = "The secret launch code is stored in the ruby vault beneath the lighthouse."
    text = filler + " " + needle + " " + filler
    result = await ingest_file(
        index, embedder, vector_store_id="vs_a", file_id="file-long", filename="long.txt", data=text.encode()
    )
    assert result.chunks > 3
    hits = await search(index, embedder, ["vs_a"], "where is the ruby vault with the launch code", max_num_results=3)
    assert needle in hits[0].text
    assert text[hits[0].start : hits[0].end] == hits[0].text
    stored = await index.file_chunks("vs_a", "file-long")
    assert [c.chunk_index for c in stored] == list(range(result.chunks))


class _Gated:
    """The real embedder, whose embedding waits (up to 10 s) for `ready`: a slow embedding."""

    def __init__(self, inner: WordLlamaEmbedder, ready: asyncio.Event, fail: bool = False) -> None:
        self.inner, self.ready, self.fail = inner, ready, fail

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    async def embed(self, texts: Sequence[str]) -> Vectors:
        await asyncio.wait_for(self.ready.wait(), 10)
        if self.fail:
            raise RuntimeError("embedding failed")
        return await self.inner.embed(texts)


def _signal_keyword_start(index: ChunkIndex, started: asyncio.Event, fail: bool = False) -> None:
    rank = index.keyword_candidates

    async def keyword_candidates(*args: Any, **kwargs: Any) -> list[Candidate]:
        started.set()
        if fail:
            raise RuntimeError("keyword ranking failed")
        return await rank(*args, **kwargs)

    index.keyword_candidates = keyword_candidates  # type: ignore[method-assign]


async def test_keyword_ranking_runs_while_the_query_is_embedded(index: ChunkIndex, embedder: WordLlamaEmbedder) -> None:
    """The keyword side needs no embedding: it starts before the query's embedding ends (were they in
    sequence, the gated embedding would wait for a keyword search that never starts, and time out)."""
    await _fill(index, embedder)
    started = asyncio.Event()
    _signal_keyword_start(index, started)
    for mode in ("hybrid", "keyword"):
        results = await search(index, _Gated(embedder, started), ["vs_a"], "volcano eruption lava", mode=mode)
        assert results[0].file_id == "file-volcano"
    results = await search(index, _Gated(embedder, started), ["vs_a"], ["volcano lava", "chess rook"])
    assert {r.file_id for r in results[:2]} == {"file-volcano", "file-chess"}


async def test_a_failing_side_fails_the_search_and_stops_the_other(
    index: ChunkIndex, embedder: WordLlamaEmbedder
) -> None:
    await _fill(index, embedder)
    started = asyncio.Event()
    _signal_keyword_start(index, started)
    with pytest.raises(RuntimeError, match="embedding failed"):
        await search(index, _Gated(embedder, started, fail=True), ["vs_a"], "volcano eruption lava")
    started = asyncio.Event()
    _signal_keyword_start(index, started, fail=True)
    with pytest.raises(RuntimeError, match="keyword ranking failed"):
        await search(index, _Gated(embedder, started), ["vs_a"], "volcano eruption lava")
    started.set()
    assert (await search(index, embedder, ["vs_a"], "chess castling", mode="vector"))[0].file_id == "file-chess"
