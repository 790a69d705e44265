"""The API in process (tests/inprocess/conftest.py): quick feedback on routes, services and the store,
with the wire shapes the subprocess contract tests check through the SDK."""

from __future__ import annotations

import httpx


async def test_assistant_create_list_retrieve_delete(api: httpx.AsyncClient) -> None:
    made = await api.post("/assistants", json={"model": "gpt-4o", "name": "Tutor", "metadata": {"team": "a"}})
    assert made.status_code == 200, made.text
    body = made.json()
    assert body["object"] == "assistant" and body["id"].startswith("asst_")
    assert (body["name"], body["model"], body["metadata"], body["tools"]) == ("Tutor", "gpt-4o", {"team": "a"}, [])

    listed = (await api.get("/assistants")).json()
    assert listed["object"] == "list" and [a["id"] for a in listed["data"]] == [body["id"]]
    assert (await api.get(f"/assistants/{body['id']}")).json() == body

    deleted = await api.delete(f"/assistants/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "assistant.deleted", "deleted": True}
    assert (await api.get(f"/assistants/{body['id']}")).status_code == 404
    assert (await api.get("/assistants")).json()["data"] == []


async def test_thread_with_messages(api: httpx.AsyncClient) -> None:
    made = await api.post("/threads", json={"messages": [{"role": "user", "content": "first"}]})
    assert made.status_code == 200, made.text
    thread = made.json()
    assert thread["object"] == "thread" and thread["id"].startswith("thread_")
    added = await api.post(f"/threads/{thread['id']}/messages", json={"role": "assistant", "content": "second"})
    assert added.status_code == 200, added.text
    message = added.json()
    assert message["thread_id"] == thread["id"] and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": {"value": "second", "annotations": []}}]

    listed = (await api.get(f"/threads/{thread['id']}/messages", params={"order": "asc"})).json()
    texts = [m["content"][0]["text"]["value"] for m in listed["data"]]
    assert texts == ["first", "second"]
    assert listed["first_id"] == listed["data"][0]["id"] and listed["last_id"] == message["id"]


async def test_pagination_walks_every_page_once(api: httpx.AsyncClient) -> None:
    made = [(await api.post("/assistants", json={"model": "gpt-4o", "name": f"a{i}"})).json()["id"] for i in range(7)]
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 3, "order": "asc", **({"after": after} if after else {})}
        page = (await api.get("/assistants", params=params)).json()
        seen += [a["id"] for a in page["data"]]
        assert len(page["data"]) <= 3
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == made


async def test_errors_have_openais_shape(api: httpx.AsyncClient) -> None:
    missing = await api.get("/threads/thread_nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "No thread found with id 'thread_nope'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    bad = await api.post("/assistants", json={"name": "no model"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error" and bad.json()["error"]["param"] == "model"
    unauthorised = await api.get("/assistants", headers={"Authorization": "Bearer sk-wrong"})
    assert unauthorised.status_code == 401
    assert unauthorised.json()["error"]["code"] == "invalid_api_key"
