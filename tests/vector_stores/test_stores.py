"""Vector stores, their files and batches, search and content through the official SDK (strict mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_KEY
from tests.retrieval.files import docx_bytes, pdf_bytes, pptx_bytes
from tests.support.server import LoomServer
from tests.support.wait import wait_for
from tests.vector_stores.conftest import INGEST_TIMEOUT_S, big_text

NOTES = b"The capital of Freedonia is Gnarlytown. Gnarlytown has three hundred bridges over the Zarn river.\n"
RECIPES = b"Pancakes need flour, eggs, milk and a pinch of salt. Fry them in butter until golden.\n"


def upload(client: openai.OpenAI, name: str, data: bytes) -> str:
    return client.files.create(file=(name, data), purpose="assistants").id


def test_store_lifecycle(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(
        name="kb", metadata={"team": "a"}, expires_after={"anchor": "last_active_at", "days": 3}
    )
    assert vs.object == "vector_store" and vs.id.startswith("vs_")
    assert vs.status == "completed" and vs.usage_bytes == 0 and vs.file_counts.total == 0
    assert vs.expires_after is not None and vs.expires_after.days == 3
    assert vs.last_active_at is not None and vs.expires_at == vs.last_active_at + 3 * 86400

    updated = client.vector_stores.update(vs.id, name="kb2", metadata={"team": "b"}, expires_after=None)
    assert updated.name == "kb2" and updated.metadata == {"team": "b"}
    assert updated.expires_after is None and updated.expires_at is None
    assert client.vector_stores.retrieve(vs.id).name == "kb2"

    ids = [client.vector_stores.create(name=f"page-{i}").id for i in range(3)]
    page = client.vector_stores.list(limit=2, order="desc")
    assert [s.id for s in page.data] == ids[::-1][:2] and page.has_more
    after = client.vector_stores.list(limit=2, order="desc", after=ids[1])
    assert after.data[0].id == ids[0]

    deleted = client.vector_stores.delete(vs.id)
    assert deleted.deleted and deleted.object == "vector_store.deleted"
    with pytest.raises(openai.NotFoundError) as err:
        client.vector_stores.retrieve(vs.id)
    assert f"No vector store found with id '{vs.id}'." in str(err.value)


def test_create_validation(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.vector_stores.create(chunking_strategy={"type": "auto"})
    assert err.value.param == "chunking_strategy"
    file_id = upload(client, "n.txt", NOTES)
    with pytest.raises(openai.BadRequestError) as err:
        client.vector_stores.create(
            file_ids=[file_id],
            chunking_strategy={"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 150}},
        )
    assert "chunk_overlap_tokens" in str(err.value.param)
    with pytest.raises(openai.BadRequestError) as err:
        client.vector_stores.create(extra_body={"bogus": 1})
    assert "Unrecognized request argument supplied: bogus" in err.value.message
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.create(file_ids=["file-nope"])


def test_upload_and_poll_counts_usage_and_content(client: openai.OpenAI, vs_server: LoomServer) -> None:
    vs = client.vector_stores.create(name="notes")
    f = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("notes.txt", NOTES), poll_interval_ms=20
    )
    assert f.status == "completed" and f.last_error is None and f.object == "vector_store.file"
    assert f.vector_store_id == vs.id and f.usage_bytes == len(NOTES.strip())
    assert f.chunking_strategy is not None and f.chunking_strategy.type == "static"
    assert client.files.retrieve(f.id).filename == "notes.txt"  # the vector-store file id is the File id

    store = client.vector_stores.retrieve(vs.id)
    assert store.file_counts.completed == 1 and store.file_counts.total == 1
    assert store.usage_bytes == f.usage_bytes and store.status == "completed"

    content = client.vector_stores.files.content(file_id=f.id, vector_store_id=vs.id)
    assert cast(Any, content).object == "vector_store.file_content.page"
    assert "".join(c.text or "" for c in content.data) == NOTES.decode().strip()

    raw = httpx.get(
        f"{vs_server.base_url}/vector_stores/{vs.id}/files/{f.id}", headers={"Authorization": f"Bearer {DEFAULT_KEY}"}
    )
    assert raw.status_code == 200 and raw.headers["openai-poll-after-ms"] == "20"

    second = upload(client, "recipes.txt", RECIPES)
    client.vector_stores.files.create_and_poll(file_id=second, vector_store_id=vs.id, poll_interval_ms=20)
    completed = client.vector_stores.files.list(vector_store_id=vs.id, filter="completed")
    assert {x.id for x in completed} == {f.id, second}
    assert list(client.vector_stores.files.list(vector_store_id=vs.id, filter="failed")) == []

    gone = client.vector_stores.files.delete(file_id=second, vector_store_id=vs.id)
    assert gone.deleted and gone.object == "vector_store.file.deleted"
    assert client.files.retrieve(second).id == second  # detaching leaves the File
    assert client.vector_stores.retrieve(vs.id).usage_bytes == f.usage_bytes


def test_search_queries_filters_threshold_rewrite(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="search")
    notes = upload(client, "notes.txt", NOTES)
    recipes = upload(client, "recipes.txt", RECIPES)
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id,
        files=[
            {"file_id": notes, "attributes": {"topic": "geo", "year": 2021, "public": True}},
            {"file_id": recipes, "attributes": {"topic": "food", "year": 2024, "public": False}},
        ],
        poll_interval_ms=20,
    )
    assert batch.file_counts.completed == 2 and batch.file_counts.in_progress == 0

    page = client.vector_stores.search(vs.id, query="bridges of Gnarlytown")
    assert page.data[0].file_id == notes and page.data[0].filename == "notes.txt"
    assert page.data[0].attributes == {"topic": "geo", "year": 2021, "public": True}
    assert 0 < page.data[0].score <= 1 and "Gnarlytown" in page.data[0].content[0].text

    both = client.vector_stores.search(vs.id, query=["Zarn river bridges", "flour eggs milk"])
    assert {r.file_id for r in both.data} == {notes, recipes}
    assert client.vector_stores.search(vs.id, query="Zarn river flour", max_num_results=1).data.__len__() == 1

    food = client.vector_stores.search(
        vs.id, query="Gnarlytown", filters={"type": "eq", "key": "topic", "value": "food"}
    )
    assert [r.file_id for r in food.data] == [recipes] or food.data == []
    assert all(r.file_id == recipes for r in food.data)
    compound = client.vector_stores.search(
        vs.id,
        query="Gnarlytown pancakes",
        filters={
            "type": "and",
            "filters": [{"type": "gte", "key": "year", "value": 2020}, {"type": "eq", "key": "public", "value": True}],
        },
    )
    assert [r.file_id for r in compound.data] == [notes]
    none = client.vector_stores.search(
        vs.id, query="Gnarlytown", filters={"type": "in", "key": "topic", "value": ["x"]}
    )
    assert none.data == []

    # Attribute updates reach the index at once.
    client.vector_stores.files.update(file_id=recipes, vector_store_id=vs.id, attributes={"topic": "geo"})
    geo = client.vector_stores.search(vs.id, query="pancakes", filters={"type": "eq", "key": "topic", "value": "geo"})
    assert recipes in {r.file_id for r in geo.data}

    strict = client.vector_stores.search(
        vs.id, query="Gnarlytown", ranking_options={"ranker": "auto", "score_threshold": 1.0}
    )
    assert all(r.score >= 1.0 for r in strict.data)
    rewritten = client.vector_stores.search(vs.id, query="What is the capital of Freedonia?", rewrite_query=True)
    assert rewritten.search_query == ["capital freedonia"]  # type: ignore[attr-defined]
    assert rewritten.data[0].file_id == notes

    with pytest.raises(openai.BadRequestError) as err:
        client.vector_stores.search(vs.id, query="x", max_num_results=51)
    assert err.value.param == "max_num_results"
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.search(vs.id, query="x", filters=cast(Any, {"type": "near", "key": "a", "value": 1}))


def test_file_batches_upload_and_poll_list_and_cancel(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="batches")
    batch = client.vector_stores.file_batches.upload_and_poll(
        vector_store_id=vs.id,
        files=[("a.md", b"# Alpha\nAlpha centauri is a star system."), ("b.txt", b"Beta particles are electrons.")],
        poll_interval_ms=20,
    )
    assert cast(str, batch.object) == "vector_store.file_batch" and batch.id.startswith("vsfb_")
    assert batch.status == "completed" and batch.file_counts.completed == 2 and batch.file_counts.total == 2
    listed = client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id)
    assert len(listed.data) == 2 and all(x.status == "completed" for x in listed.data)
    assert client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id).status == "completed"
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id)

    # A batch still ingesting a large file can be cancelled: its pending files become `cancelled`.
    big = upload(client, "big.txt", big_text(30_000))
    small = upload(client, "small.txt", b"small file")
    pending = client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[big, small])
    assert pending.status == "in_progress" and pending.file_counts.in_progress == 2
    cancelled = client.vector_stores.file_batches.cancel(pending.id, vector_store_id=vs.id)
    assert cancelled.status == "cancelled" and cancelled.file_counts.in_progress == 0
    assert cancelled.file_counts.cancelled >= 1
    statuses = {x.id: x.status for x in client.vector_stores.file_batches.list_files(pending.id, vector_store_id=vs.id)}
    assert statuses[big] == "cancelled"
    cancelled_files = client.vector_stores.files.list(vector_store_id=vs.id, filter="cancelled")
    assert big in {x.id for x in cancelled_files}
    # Its chunks never become searchable once the worker notices.
    wait_for(
        lambda: not any(r.file_id == big for r in client.vector_stores.search(vs.id, query="archive shelf").data),
        INGEST_TIMEOUT_S,
        "cancelled file to leave the index",
    )

    with pytest.raises(openai.BadRequestError):
        client.vector_stores.file_batches.create(vector_store_id=vs.id)  # neither file_ids nor files


PARSED = {
    "notes.txt": (b"plain text mentions quokka", "quokka"),
    "readme.md": (b"# Title\n\nThe markdown mentions **axolotl**.", "axolotl"),
    "page.html": (
        b"<html><body><h1>Hi</h1><p>The page mentions narwhal.</p><script>x=1</script></body></html>",
        "narwhal",
    ),
    "data.json": (b'{"animal": "pangolin", "count": 3}', "pangolin"),
    "table.csv": (b"name,kind\nokapi,mammal\n", "okapi"),
    "code.py": (b"def tapir():\n    return 'tapir'\n", "tapir"),
    "doc.pdf": (pdf_bytes(["The pdf mentions wombat.", "Second page."]), "wombat"),
    "doc.docx": (docx_bytes(["The docx mentions capybara."], [["a", "b"], ["c", "d"]]), "capybara"),
    "deck.pptx": (pptx_bytes([("Slide", "The pptx mentions echidna.")]), "echidna"),
}


def test_each_parser_through_the_api(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="parsers")
    ids = {name: upload(client, name, data) for name, (data, _word) in PARSED.items()}
    batch = client.vector_stores.file_batches.create_and_poll(
        vector_store_id=vs.id, file_ids=list(ids.values()), poll_interval_ms=20
    )
    files = {x.id: x for x in client.vector_stores.files.list(vector_store_id=vs.id, limit=100)}
    assert batch.file_counts.completed == len(PARSED), {i: (f.status, f.last_error) for i, f in files.items()}
    for name, (_data, word) in PARSED.items():
        text = "".join(
            c.text or "" for c in client.vector_stores.files.content(file_id=ids[name], vector_store_id=vs.id).data
        )
        assert word in text, name
        hits = client.vector_stores.search(vs.id, query=word, max_num_results=3)
        assert hits.data[0].file_id == ids[name], name
    html = "".join(
        c.text or "" for c in client.vector_stores.files.content(file_id=ids["page.html"], vector_store_id=vs.id).data
    )
    assert "x=1" not in html and "<p>" not in html


def test_failures_have_last_error_codes(client: openai.OpenAI) -> None:
    vs = client.vector_stores.create(name="bad")
    corrupt = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("broken.pdf", b"%PDF-1.7\n this is not really a pdf \x00\x01"), poll_interval_ms=20
    )
    assert corrupt.status == "failed" and corrupt.last_error is not None
    assert corrupt.last_error.code == "invalid_file"
    unsupported = client.vector_stores.files.upload_and_poll(
        vector_store_id=vs.id, file=("image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4), poll_interval_ms=20
    )
    assert unsupported.status == "failed" and unsupported.last_error is not None
    assert unsupported.last_error.code == "unsupported_file"
    store = client.vector_stores.retrieve(vs.id)
    assert store.file_counts.failed == 2 and store.file_counts.completed == 0 and store.status == "completed"


def test_deleting_a_file_removes_it_from_every_store(client: openai.OpenAI) -> None:
    file_id = upload(client, "shared.txt", NOTES)
    keep = upload(client, "keep.txt", RECIPES)
    stores = [client.vector_stores.create(name=f"s{i}", file_ids=[file_id, keep]) for i in range(2)]
    wait_for(
        lambda: all(client.vector_stores.retrieve(vs.id).file_counts.completed == 2 for vs in stores),
        INGEST_TIMEOUT_S,
        "ingestion",
    )
    client.files.delete(file_id)
    for vs in stores:
        store = client.vector_stores.retrieve(vs.id)
        assert store.file_counts.total == 1 and store.file_counts.completed == 1
        assert [f.id for f in client.vector_stores.files.list(vector_store_id=vs.id)] == [keep]
        assert all(r.file_id != file_id for r in client.vector_stores.search(vs.id, query="Gnarlytown bridges").data)
        with pytest.raises(openai.NotFoundError):
            client.vector_stores.files.retrieve(file_id=file_id, vector_store_id=vs.id)


def test_other_project_gets_404s(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    file_id = upload(client, "mine.txt", NOTES)
    vs = client.vector_stores.create(name="mine", file_ids=[file_id])
    batch = client.vector_stores.file_batches.create(vector_store_id=vs.id, file_ids=[file_id])
    calls: list[Callable[[], object]] = [
        lambda: other_client.vector_stores.retrieve(vs.id),
        lambda: other_client.vector_stores.update(vs.id, name="x"),
        lambda: other_client.vector_stores.delete(vs.id),
        lambda: other_client.vector_stores.search(vs.id, query="x"),
        lambda: other_client.vector_stores.files.list(vector_store_id=vs.id),
        lambda: other_client.vector_stores.files.retrieve(file_id=file_id, vector_store_id=vs.id),
        lambda: other_client.vector_stores.files.content(file_id=file_id, vector_store_id=vs.id),
        lambda: other_client.vector_stores.files.delete(file_id=file_id, vector_store_id=vs.id),
        lambda: other_client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=vs.id),
        lambda: other_client.vector_stores.file_batches.cancel(batch.id, vector_store_id=vs.id),
        lambda: other_client.vector_stores.file_batches.list_files(batch.id, vector_store_id=vs.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    # Another project cannot attach my file to its own store either.
    theirs = other_client.vector_stores.create(name="theirs")
    with pytest.raises(openai.NotFoundError):
        other_client.vector_stores.files.create(vector_store_id=theirs.id, file_id=file_id)
    assert vs.id not in {s.id for s in other_client.vector_stores.list(limit=100)}
    assert client.vector_stores.retrieve(vs.id).name == "mine"


def test_beta_header_optional(vs_server: LoomServer) -> None:
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    created = httpx.post(f"{vs_server.base_url}/vector_stores", json={"name": "h"}, headers=headers)
    assert created.status_code == 200
    with_beta = httpx.get(
        f"{vs_server.base_url}/vector_stores/{created.json()['id']}",
        headers={**headers, "OpenAI-Beta": "assistants=v2"},
    )
    assert with_beta.status_code == 200
    v1 = httpx.get(f"{vs_server.base_url}/vector_stores", headers={**headers, "OpenAI-Beta": "assistants=v1"})
    assert v1.status_code == 400 and v1.json()["error"]["code"] == "invalid_beta"


async def _age_store(server: LoomServer, store_id: str, days: int) -> None:
    """Move a store's clock back `days` days in the database (what waiting that long would do)."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from loom.store import tables

    url = server.database_url or f"sqlite+aiosqlite:///{(server.data_dir / 'loom.db').resolve()}"
    engine = create_async_engine(url)
    try:
        t = tables.vector_stores
        async with engine.begin() as conn:
            data = dict((await conn.execute(select(t.c.data).where(t.c.id == store_id))).scalar_one())
            shift = days * 86400
            data["created_at"] -= shift
            data["last_active_at"] -= shift
            data["expires_at"] -= shift
            await conn.execute(t.update().where(t.c.id == store_id).values(data=data, expires_at=data["expires_at"]))
    finally:
        await engine.dispose()


def test_expired_store_answers_expired_and_is_emptied(client: openai.OpenAI, vs_server: LoomServer) -> None:
    file_id = upload(client, "notes.txt", NOTES)
    vs = client.vector_stores.create(
        name="short-lived", file_ids=[file_id], expires_after={"anchor": "last_active_at", "days": 1}
    )
    wait_for(lambda: client.vector_stores.retrieve(vs.id).file_counts.completed == 1, INGEST_TIMEOUT_S, "ingestion")
    client.vector_stores.search(vs.id, query="Gnarlytown")  # use moves last_active_at
    asyncio.run(_age_store(vs_server, vs.id, 2))

    store = client.vector_stores.retrieve(vs.id)
    assert store.status == "expired"
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.search(vs.id, query="Gnarlytown")
    with pytest.raises(openai.BadRequestError):
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=file_id)
    # The janitor removes its files and chunks; the store keeps answering `expired`.
    wait_for(
        lambda: client.vector_stores.retrieve(vs.id).file_counts.total == 0, INGEST_TIMEOUT_S, "expired store cleanup"
    )
    assert client.vector_stores.retrieve(vs.id).status == "expired" and client.files.retrieve(file_id).id == file_id


def test_api_writes_while_a_large_file_ingests(client: openai.OpenAI) -> None:
    """Ingestion runs in the background: writes and reads keep working (and succeed) meanwhile."""
    vs = client.vector_stores.create(name="busy")
    # ~170 chunks: a few seconds of ingestion with the default minilm, as the 12,000 paragraphs were with
    # WordLlama (those took 67-74 s with minilm on a loaded machine, near the 120 s wait).
    big = upload(client, "big.txt", big_text(4_000, "pulsar"))
    client.vector_stores.files.create(vector_store_id=vs.id, file_id=big)
    small_ids = []
    for i in range(15):
        other = client.vector_stores.create(name=f"side-{i}", metadata={"i": str(i)})
        client.vector_stores.update(other.id, name=f"side-{i}-renamed")
        small = upload(client, f"s{i}.txt", f"side note {i} about comets".encode())
        client.vector_stores.files.create(vector_store_id=vs.id, file_id=small)
        small_ids.append(small)
        client.vector_stores.search(vs.id, query="comets")
    wait_for(lambda: client.vector_stores.retrieve(vs.id).file_counts.in_progress == 0, what="ingestion", timeout=120)
    store = client.vector_stores.retrieve(vs.id)
    assert store.file_counts.completed == 16 and store.file_counts.failed == 0
    assert client.vector_stores.search(vs.id, query="pulsar archive shelf").data[0].file_id == big


def test_attribute_limits(client: openai.OpenAI) -> None:
    """File attributes: ≤16 keys, keys ≤64 chars, values strings (≤512), numbers or booleans."""
    vs = client.vector_stores.create(name="attrs")
    file_id = upload(client, "a.txt", b"attributes")
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({str(i): i for i in range(17)}, "attributes", "object_above_max_properties"),
        ({"k" * 65: "v"}, "attributes." + "k" * 65, "string_above_max_length"),
        ({"nested": {"a": 1}}, "attributes.nested", "invalid_type"),
        ({"long": "x" * 513}, "attributes.long", "string_above_max_length"),
    ]
    for attributes, param, code in bad:
        with pytest.raises(openai.BadRequestError) as err:
            client.vector_stores.files.create(vector_store_id=vs.id, file_id=file_id, attributes=attributes)
        assert (err.value.param, err.value.code) == (param, code), err.value.body
    ok: dict[str, str | float | bool] = {"year": 2024, "draft": False, "team": "x" * 512, "score": 0.5}
    created = client.vector_stores.files.create(vector_store_id=vs.id, file_id=file_id, attributes=ok)
    assert created.attributes == ok


def test_search_scores_do_not_move_when_another_project_ingests(
    client: openai.OpenAI, other_client: openai.OpenAI
) -> None:
    # Issue 15: keyword statistics are the searched store's own. Another project's store flooding
    # one of the query's words changes neither this store's results nor their scores.
    vs = client.vector_stores.create(name="mine")
    docs = [
        b"Ribosomes translate messenger RNA into protein.\n",
        b"Chaperones assist the folding of new polypeptides.\n",
        b"Kinase signalling controls tumour growth in mice.\n",
        b"Protein chaperones prevent aggregation during growth.\n",
    ]
    for i, body in enumerate(docs):
        client.vector_stores.files.upload_and_poll(vector_store_id=vs.id, file=(f"m{i}.txt", body), poll_interval_ms=20)
    query = "protein chaperones growth"

    def ranked() -> list[tuple[str, float]]:
        return [(r.file_id, r.score) for r in client.vector_stores.search(vs.id, query=query).data]

    before = ranked()
    assert len(before) == len(docs)
    theirs = other_client.vector_stores.create(name="theirs")
    flood = "\n".join(f"Protein {i} binds protein {i + 1}; protein levels rose in sample {i}." for i in range(400))
    done = other_client.vector_stores.files.upload_and_poll(
        vector_store_id=theirs.id, file=("flood.txt", flood.encode()), poll_interval_ms=20
    )
    assert done.status == "completed"
    assert other_client.vector_stores.search(theirs.id, query="protein").data
    assert ranked() == before  # the same files, the same scores, exactly
