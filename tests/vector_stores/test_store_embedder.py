"""A store keeps the embedder it was built with when the server restarts with another default."""

from __future__ import annotations

import asyncio

import openai
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import sdk_client
from tests.support.postgres import new_database
from tests.support.server import LoomServer
from tests.vector_stores.conftest import ENV

DOCS = {
    "owls.txt": b"Owls hunt at night; their soft feathers let them fly silently towards mice and voles.",
    "tides.txt": b"The moon's pull on the oceans raises two bulges of water, so coasts see two high tides a day.",
    "bread.txt": b"Yeast eats the sugars in dough and releases carbon dioxide, which makes the loaf rise.",
}
LATER = ("glaciers.txt", b"Glaciers carve U-shaped valleys as the ice grinds the bedrock beneath it.")
QUERIES = ["nocturnal birds of prey", "why does the sea level change twice daily", "baking"]


def _index(client: openai.OpenAI, store_id: str, name: str, data: bytes) -> str:
    f = client.files.create(file=(name, data), purpose="assistants")
    done = client.vector_stores.files.create_and_poll(vector_store_id=store_id, file_id=f.id, poll_interval_ms=50)
    assert done.status == "completed", done.last_error
    return f.id


def _results(client: openai.OpenAI, store_id: str) -> list[list[tuple[str, float]]]:
    return [
        [(r.file_id, round(r.score, 5)) for r in client.vector_stores.search(store_id, query=q).data] for q in QUERIES
    ]


def _vector_sizes(server: LoomServer) -> dict[str, tuple[str | None, int]]:
    """Each store's recorded embedder and the size of its vectors, read from the database itself."""

    async def read() -> dict[str, tuple[str | None, int]]:
        if server.database_url:
            engine = create_async_engine(server.database_url)
            size = "max(c.embedding_dims)"
        else:
            engine = create_async_engine(f"sqlite+aiosqlite:///{server.data_dir / 'loom.db'}")
            size = "max(length(c.embedding)) / 4"
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        f"SELECT s.id, s.embedder, {size} FROM vector_stores s "
                        "JOIN retrieval_chunks c ON c.vector_store_id = s.id GROUP BY s.id, s.embedder"
                    )
                )
                return {r[0]: (r[1], int(r[2])) for r in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_store_keeps_its_embedder_after_the_default_changes(backend: str) -> None:
    url = new_database() if backend == "postgres" else ""
    env = {**ENV, "LOOM_EMBEDDING_PROVIDER": "wordllama"}
    with LoomServer(database_url=url, extra_env=env) as first:
        client = sdk_client(first)
        old = client.vector_stores.create(name="built with wordllama")
        ids = {name: _index(client, old.id, name, data) for name, data in DOCS.items()}
        before = _results(client, old.id)
    assert [r[0][0] for r in before] == [ids["owls.txt"], ids["tides.txt"], ids["bread.txt"]]

    env = dict(ENV)  # the default now: minilm
    with LoomServer(database_url=url, data_dir=first.data_dir, extra_env=env) as second:
        client = sdk_client(second)
        # The old store answers exactly as before: its queries are embedded by its own model.
        assert _results(client, old.id) == before
        # New files of the old store are embedded by its model too, and found.
        later = _index(client, old.id, *LATER)
        hits = client.vector_stores.search(old.id, query="ice sculpting mountain valleys").data
        assert hits[0].file_id == later
        # A new store takes the new default.
        new = client.vector_stores.create(name="built with minilm")
        new_ids = {name: _index(client, new.id, name, data) for name, data in DOCS.items()}
        fresh = _results(client, new.id)
        assert [r[0][0] for r in fresh] == [new_ids["owls.txt"], new_ids["tides.txt"], new_ids["bread.txt"]]
        sizes = _vector_sizes(second)
    assert sizes[old.id] == ("wordllama-l2_supercat-256", 256)
    assert sizes[new.id] == ("all-MiniLM-L6-v2", 384)
