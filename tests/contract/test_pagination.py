"""Cursor pagination: auto-pagination over many pages in both orders, ties on equal created_at, cursors."""

from __future__ import annotations

import io
import secrets

import httpx
import openai
import pytest


def _walk_before(raw: httpx.Client, path: str, first_id: str, limit: int, order: str) -> list[str]:
    """Page backwards with `before` (the SDK never does; other clients do)."""
    seen: list[str] = []
    cursor = first_id
    while True:
        page = raw.get(path, params={"limit": limit, "order": order, "before": cursor}).json()
        if not page["data"]:
            assert page["first_id"] is None and page["last_id"] is None and page["has_more"] is False
            return seen
        seen = [m["id"] for m in page["data"]] + seen
        cursor = page["first_id"]
        if not page["has_more"]:
            return seen


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_messages_with_equal_created_at(client: openai.OpenAI, raw: httpx.Client, order: str) -> None:
    # One request makes all of them: most share a created_at second, so only the tie-breaker orders them.
    contents = [f"m{i}" for i in range(30)]
    thread = client.beta.threads.create(messages=[{"role": "user", "content": c} for c in contents])
    everything = list(client.beta.threads.messages.list(thread.id, order="asc", limit=100))
    made = [m.id for m in everything]
    assert [m.content[0].text.value for m in everything] == contents  # type: ignore[union-attr]
    assert len({m.created_at for m in everything}) < len(everything), "expected ties on created_at"
    expected = made if order == "asc" else made[::-1]
    for limit in (1, 4, 7):
        seen = [m.id for m in client.beta.threads.messages.list(thread.id, limit=limit, order=order)]  # type: ignore[arg-type]
        assert seen == expected, f"limit={limit}"
    # Backwards with `before`, from the last item.
    path = f"/threads/{thread.id}/messages"
    assert _walk_before(raw, path, expected[-1], 4, order) == expected[:-1]


def test_pages_report_has_more_first_and_last(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": str(i)} for i in range(5)])
    ids = [m.id for m in client.beta.threads.messages.list(thread.id, order="asc")]
    page = client.beta.threads.messages.list(thread.id, order="asc", limit=2)
    assert [m.id for m in page.data] == ids[:2] and page.has_more
    assert page.first_id == ids[0] and page.last_id == ids[1]  # type: ignore[attr-defined]
    last = client.beta.threads.messages.list(thread.id, order="asc", limit=2, after=ids[3])
    assert [m.id for m in last.data] == ids[4:] and not last.has_more
    exact = client.beta.threads.messages.list(thread.id, order="asc", limit=5)
    assert len(exact.data) == 5 and not exact.has_more
    empty = client.beta.threads.messages.list(thread.id, order="asc", after=ids[4])
    assert empty.data == [] and not empty.has_more


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_assistants_many_pages(client: openai.OpenAI, order: str) -> None:
    tag = secrets.token_hex(4)
    made = [client.beta.assistants.create(model="gpt-4o", name=tag).id for _ in range(12)]
    seen = [a.id for a in client.beta.assistants.list(limit=5, order=order) if a.name == tag]  # type: ignore[arg-type]
    assert seen == (made if order == "asc" else made[::-1])
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_files_many_pages(client: openai.OpenAI, order: str) -> None:
    tag = secrets.token_hex(4)
    made = [client.files.create(file=(f"{tag}.txt", io.BytesIO(b"x")), purpose="assistants").id for _ in range(9)]
    seen = [f.id for f in client.files.list(limit=2, order=order) if f.filename == f"{tag}.txt"]  # type: ignore[arg-type]
    assert seen == (made if order == "asc" else made[::-1])


def test_cursor_from_another_list_is_rejected(client: openai.OpenAI) -> None:
    a = client.beta.threads.create(messages=[{"role": "user", "content": "a"}])
    b = client.beta.threads.create(messages=[{"role": "user", "content": "b"}])
    foreign = next(iter(client.beta.threads.messages.list(b.id))).id
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.messages.list(a.id, after=foreign)
    assert err.value.param == "after"
