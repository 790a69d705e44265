"""The error rows of CONFORMANCE §1.4 and the header rules of §1.2, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.contract.conftest import raw_client
from tests.support.server import LoomServer


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("path", "kind", "object_id"),
    [
        ("/assistants/asst_nope", "assistant", "asst_nope"),
        ("/threads/thread_nope", "thread", "thread_nope"),
        ("/threads/thread_nope/messages", "thread", "thread_nope"),
        ("/files/file-nope", "file", "file-nope"),
        ("/files/file-nope/content", "file", "file-nope"),
    ],
)
def test_404_wording(raw: httpx.Client, path: str, kind: str, object_id: str) -> None:
    error = _error(raw.get(path), 404)
    assert error == {
        "message": f"No {kind} found with id '{object_id}'.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_404_message_in_existing_thread(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.threads.messages.retrieve("msg_nope", thread_id=thread.id)
    assert err.value.body["message"] == "No message found with id 'msg_nope'."  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.update("msg_nope", thread_id=thread.id, metadata={})


def test_404_on_modify_and_delete(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.beta.assistants.update("asst_nope", name="x"),
        lambda: client.beta.assistants.delete("asst_nope"),
        lambda: client.beta.threads.update("thread_nope", metadata={}),
        lambda: client.beta.threads.delete("thread_nope"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_unknown_route_is_404_json(raw: httpx.Client) -> None:
    error = _error(raw.get("/nothing/here"), 404)
    assert error["message"] == "Invalid URL (GET /v1/nothing/here)"


def test_401_missing_key(loom_server: LoomServer) -> None:
    with raw_client(loom_server, key=None) as anonymous:
        for path in ("/assistants", "/threads/thread_x", "/files", "/models"):
            error = _error(anonymous.get(path), 401)
            assert "You didn't provide an API key" in str(error["message"])
            assert error["type"] == "invalid_request_error"


def test_401_before_the_beta_header_rule(loom_server: LoomServer) -> None:
    """No key and no OpenAI-Beta header: the missing key is what the client hears about first."""
    with raw_client(loom_server, key=None, beta=False) as anonymous:
        for path in ("/assistants", "/threads/thread_x", "/threads/thread_x/runs", "/vector_stores"):
            _error(anonymous.get(path), 401)
    with raw_client(loom_server, beta=False) as keyed:
        assert _error(keyed.get("/assistants"), 400)["code"] == "invalid_beta"


def test_401_wrong_key(loom_server: LoomServer) -> None:
    with raw_client(loom_server, key="sk-wrong-key-123456") as stranger:
        error = _error(stranger.get("/assistants"), 401)
    assert error["code"] == "invalid_api_key"
    assert str(error["message"]).startswith("Incorrect API key provided: ")
    assert "sk-wrong-key-123456" not in str(error["message"]), "the key must be masked"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=loom_server.base_url, api_key="sk-wrong", max_retries=0).files.list()


def test_401_malformed_authorization(loom_server: LoomServer) -> None:
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Token sk-test-default", "sk-test-default"):
        response = httpx.get(
            f"{loom_server.base_url}/assistants", headers={"Authorization": header, "OpenAI-Beta": "assistants=v2"}
        )
        _error(response, 401)


def test_unknown_field(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create()
    calls: list[Callable[[], object]] = [
        lambda: client.beta.assistants.create(model="gpt-4o", extra_body={"file_ids": []}),
        lambda: client.beta.threads.create(extra_body={"bogus": 1}),
        lambda: client.beta.threads.update(thread.id, extra_body={"bogus": 1}),
        lambda: client.beta.threads.messages.create(thread.id, role="user", content="x", extra_body={"bogus": 1}),
        lambda: client.uploads.create(
            bytes=1, filename="x", mime_type="text/plain", purpose="assistants", extra_body={"bogus": 1}
        ),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as err:
            call()
        assert err.value.code == "unknown_parameter"
        assert str(err.value.body["message"]).startswith("Unrecognized request argument supplied: ")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(extra_body={"bogus": 1})
    assert err.value.body["message"] == "Unrecognized request argument supplied: bogus"  # type: ignore[index]


def test_metadata_limits(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(metadata={f"k{i}": "v" for i in range(17)})
    assert err.value.body == {
        "message": "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
        "but got an object with 17 properties instead.",
        "type": "invalid_request_error",
        "param": "metadata",
        "code": "object_above_max_properties",
    }
    key = "k" * 65
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="gpt-4o", metadata={key: "v"})
    assert err.value.body["message"] == (  # type: ignore[index]
        f"Invalid property name in 'metadata': '{key}' is too long. Expected a string with maximum length 64, "
        "but got a string with length 65 instead."
    )
    assert err.value.param == f"metadata.{key}"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(metadata={"k": "v" * 513})
    assert err.value.body["message"] == (  # type: ignore[index]
        "Invalid 'metadata.k': string too long. Expected a string with maximum length 512, "
        "but got a string with length 513 instead."
    )
    assert err.value.code == "string_above_max_length"
    # The limits themselves are fine.
    ok = client.beta.threads.create(metadata={f"{i:064d}": "v" * 512 for i in range(16)})
    assert len(ok.metadata or {}) == 16


def test_wrong_type(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.threads.create(metadata={"key": ["a"]})  # type: ignore[dict-item]
    assert err.value.body["message"] == (  # type: ignore[index]
        "Invalid type for 'metadata.key': expected a string, but got an array instead."
    )
    assert err.value.code == "invalid_type"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model="gpt-4o", temperature="hot")  # type: ignore[arg-type]
    assert err.value.code == "invalid_type" and err.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.create(model=42)  # type: ignore[arg-type]
    assert err.value.code == "invalid_type" and err.value.param == "model"


def test_missing_required(client: openai.OpenAI, raw: httpx.Client) -> None:
    error = _error(raw.post("/assistants", json={"name": "x"}), 400)
    assert error == {
        "message": "Missing required parameter: 'model'.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "missing_required_parameter",
    }
    thread = client.beta.threads.create()
    error = _error(raw.post(f"/threads/{thread.id}/messages", json={"role": "user"}), 400)
    assert error["message"] == "Missing required parameter: 'content'."
    error = _error(raw.post("/uploads", json={"filename": "x", "purpose": "assistants", "bytes": 1}), 400)
    assert error["message"] == "Missing required parameter: 'mime_type'."


def test_malformed_json(raw: httpx.Client) -> None:
    for body in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"):
        error = _error(raw.post("/assistants", content=body, headers={"Content-Type": "application/json"}), 400)
        assert "could not parse the JSON body" in str(error["message"])
    # No assistant was made by any of them.
    assert all(a["name"] != "x" for a in raw.get("/assistants", params={"limit": 100}).json()["data"])


@pytest.mark.parametrize("path", ["/assistants", "/threads/thread_x", "/threads/thread_x/messages"])
def test_beta_header_required_on_assistants_and_threads(loom_server: LoomServer, path: str) -> None:
    with raw_client(loom_server, beta=False) as no_beta:
        error = _error(no_beta.get(path), 400)
        assert error["code"] == "invalid_beta"
        assert error["message"] == (
            "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try again by setting "
            "the header 'OpenAI-Beta: assistants=v2'."
        )
        error = _error(no_beta.post("/threads", json={}), 400)
        assert error["code"] == "invalid_beta"
        v1 = _error(no_beta.get(path, headers={"OpenAI-Beta": "assistants=v1"}), 400)
        assert v1["code"] == "invalid_beta" and "v1 Assistants API has been deprecated" in str(v1["message"])


def test_beta_header_checked_before_the_body(loom_server: LoomServer) -> None:
    with raw_client(loom_server, beta=False) as no_beta:
        error = _error(no_beta.post("/assistants", json={"model": "gpt-4o"}), 400)
    assert error["code"] == "invalid_beta"


def test_beta_header_never_required_on_files_and_uploads(loom_server: LoomServer) -> None:
    with raw_client(loom_server, beta=False) as no_beta:
        made = no_beta.post("/files", data={"purpose": "assistants"}, files={"file": ("a.txt", b"a")})
        assert made.status_code == 200, made.text
        file_id = made.json()["id"]
        assert no_beta.get("/files").status_code == 200
        assert no_beta.get(f"/files/{file_id}").status_code == 200
        assert no_beta.get(f"/files/{file_id}/content").content == b"a"
        upload = no_beta.post(
            "/uploads", json={"filename": "u.txt", "purpose": "assistants", "bytes": 1, "mime_type": "text/plain"}
        )
        assert upload.status_code == 200, upload.text
        assert no_beta.post(f"/uploads/{upload.json()['id']}/cancel").status_code == 200
        assert no_beta.delete(f"/files/{file_id}").status_code == 200
        # Even the retired v1 header does not matter there.
        assert no_beta.get("/files", headers={"OpenAI-Beta": "assistants=v1"}).status_code == 200


def test_request_id_on_every_kind_of_response(loom_server: LoomServer) -> None:
    seen: set[str] = set()
    with httpx.Client(base_url=loom_server.base_url, timeout=30) as plain:
        responses = [
            plain.get("/files"),  # 401
            plain.get("/nothing"),  # unknown route
            plain.delete("/models"),  # wrong method
            plain.get("/files", headers={"Authorization": "Bearer sk-test-default"}),  # 200
            plain.post(
                "/assistants",
                content=b"{",
                headers={"Authorization": "Bearer sk-test-default", "OpenAI-Beta": "assistants=v2"},
            ),  # 400
            httpx.get(loom_server.base_url.removesuffix("/v1") + "/health"),
        ]
    for response in responses:
        request_id = response.headers.get("x-request-id", "")
        assert request_id.startswith("req_"), (response.request.url, response.status_code)
        seen.add(request_id)
    assert len(seen) == len(responses), "request ids must be unique"
    assert {r.status_code for r in responses} >= {200, 400, 401, 404}


def test_wrong_method_is_json(raw: httpx.Client) -> None:
    error = _error(raw.put("/assistants"), 405)
    assert error["message"] == "Invalid method for URL (PUT /v1/assistants)"


def test_validation_of_query_params(client: openai.OpenAI) -> None:
    for bad in (0, 101):
        with pytest.raises(openai.BadRequestError) as err:
            client.beta.assistants.list(limit=bad)
        assert err.value.param == "limit"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.list(order="sideways")  # type: ignore[arg-type]
    assert err.value.param == "order"
    with pytest.raises(openai.BadRequestError) as err:
        client.beta.assistants.list(after="asst_unknown")
    assert err.value.param == "after"


def test_no_409_for_conflicting_upload_actions(client: openai.OpenAI) -> None:
    upload = client.uploads.create(bytes=1, filename="x", mime_type="text/plain", purpose="assistants")
    client.uploads.cancel(upload.id)
    # Cancelling twice is a business conflict: 400 (the SDK would silently retry a 409).
    with pytest.raises(openai.BadRequestError):
        client.uploads.cancel(upload.id)
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload.id, data=io.BytesIO(b"x"))


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/assistants", b'{"model": "gpt-4o", "name": "a\\u0000b"}', "name"),
        ("/threads", b'{"metadata": {"k\\u0000": "v"}}', "metadata"),
        ("/threads", b'{"messages": [{"role": "user", "content": "x\\u0000"}]}', "messages[0].content"),
        ("/uploads", b'{"filename": "a\\u0000", "purpose": "assistants", "bytes": 1, "mime_type": "t"}', "filename"),
    ],
)
def test_null_character_is_a_400_on_every_database(raw: httpx.Client, path: str, body: bytes, param: str) -> None:
    # PostgreSQL cannot store U+0000 (it answered 500 before); both databases refuse it the same way.
    error = _error(raw.post(path, content=body, headers={"Content-Type": "application/json"}), 400)
    assert error["param"] == param and error["code"] == "invalid_value"
    # An escaped backslash followed by "u0000" is ordinary text.
    ok = raw.post("/assistants", content=b'{"model": "gpt-4o", "name": "\\\\u0000"}')
    assert ok.status_code == 200 and ok.json()["name"] == "\\u0000"


@pytest.mark.parametrize(
    "url",
    [
        "/assistants?after=asst_%00",
        "/assistants/asst_%00",
        "/threads/thread_%00/messages",
        "/threads/thread_x/messages?run_id=run_%00",
        "/files/file-%00",
        "/files?purpose=assistants%00",
        "/files/file-%00/content",
    ],
)
def test_null_character_in_url_is_a_400(raw: httpx.Client, url: str) -> None:
    # These were 500s on PostgreSQL, which refuses U+0000 in query parameters.
    error = _error(raw.get(url), 400)
    assert "null characters" in str(error["message"])
