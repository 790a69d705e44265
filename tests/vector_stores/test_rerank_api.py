"""`ranking_options.ranker` over the API: vector store search and file_search in runs rerank a store
embedded by MiniLM (its chunks' token vectors); `none` keeps fusion's order; the threshold cuts final scores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import sdk_client
from tests.fakes.upstream import FakeUpstream, ToolCallSpec, Turn
from tests.retrieval.test_rerank import WRONG, WRONG_QUERY
from tests.support.postgres import database_url_for
from tests.support.server import LoomServer
from tests.vector_stores.conftest import ENV


@pytest.fixture(scope="module")
def minilm_server(backend: str, upstream: FakeUpstream) -> Iterator[LoomServer]:
    env = {**ENV, "LOOM_EMBEDDING_PROVIDER": "minilm"}
    with LoomServer(database_url=database_url_for(backend), upstream_base_url=upstream.base_url, extra_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def store(minilm_server: LoomServer) -> tuple[str, dict[str, str]]:
    client = sdk_client(minilm_server)
    vs = client.vector_stores.create(name="leaves")
    names: dict[str, str] = {}
    for file_id, body in WRONG.items():
        f = client.vector_stores.files.upload_and_poll(
            vector_store_id=vs.id, file=(f"{file_id}.txt", body.encode()), poll_interval_ms=20
        )
        assert f.status == "completed", f.last_error
        names[f.id] = file_id
    return vs.id, names


def _search(client: openai.OpenAI, vs_id: str, names: dict[str, str], **ranking: Any) -> list[tuple[str, float]]:
    kw: dict[str, Any] = {"ranking_options": ranking} if ranking else {}
    return [(names[r.file_id], r.score) for r in client.vector_stores.search(vs_id, query=WRONG_QUERY, **kw).data]


def test_search_reranks_unless_none(minilm_server: LoomServer, store: tuple[str, dict[str, str]]) -> None:
    client = sdk_client(minilm_server)
    vs_id, names = store
    fused = _search(client, vs_id, names, ranker="none")
    assert [n for n, _ in fused][:2] == ["file-shop", "file-answer"]
    for ranking in ({}, {"ranker": "auto"}, {"ranker": "default-2024-11-15"}):
        reranked = _search(client, vs_id, names, **ranking)
        assert [n for n, _ in reranked][:2] == ["file-answer", "file-shop"], ranking
    final = dict(_search(client, vs_id, names, ranker="auto"))
    cut = (final["file-shop"] + final["file-answer"]) / 2
    assert [n for n, _ in _search(client, vs_id, names, ranker="auto", score_threshold=cut)] == ["file-answer"]
    assert "file-shop" in dict(_search(client, vs_id, names, ranker="none", score_threshold=cut))


def test_file_search_in_a_run_is_reranked(
    minilm_server: LoomServer, store: tuple[str, dict[str, str]], upstream: FakeUpstream
) -> None:
    client = sdk_client(minilm_server)
    vs_id, names = store
    assistant = client.beta.assistants.create(
        model="gpt-4o",
        tools=[{"type": "file_search", "file_search": {"ranking_options": {"ranker": "auto", "score_threshold": 0.0}}}],
        tool_resources={"file_search": {"vector_store_ids": [vs_id]}},
    )
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Why do leaves change colour?"}])
    upstream.push(Turn.calls(ToolCallSpec("file_search", {"queries": [WRONG_QUERY]})), Turn.reply("Chlorophyll."))
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "completed", run.last_error
    steps = client.beta.threads.runs.steps.list(thread_id=thread.id, run_id=run.id, order="asc").data
    call: Any = steps[0].step_details.tool_calls[0]  # type: ignore[union-attr]
    assert call.file_search.ranking_options.ranker == "default_2024_08_21"
    assert [names[r.file_id] for r in call.file_search.results][:2] == ["file-answer", "file-shop"]
