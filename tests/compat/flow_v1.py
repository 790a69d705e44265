# mypy: disable-error-code="union-attr,index"
"""The core flow with an old openai-python 1.x, run by that SDK's own interpreter (not the test venv).

Usage: python flow_v1.py BASE_URL API_KEY. Prints "ok" and exits 0 when every check passed.
"""

import io
import sys

import openai


def main(base_url: str, api_key: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, _strict_response_validation=True)
    # 1.65 is the last release with the beta vector-store paths.
    assert hasattr(client.beta, "vector_stores"), "expected client.beta.vector_stores in openai 1.65"

    assistant = client.beta.assistants.create(
        model="gpt-4o",
        name="compat",
        instructions="Be brief.",
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        metadata={"sdk": openai.__version__},
    )
    assert assistant.id.startswith("asst_")
    assert client.beta.assistants.retrieve(assistant.id).name == "compat"
    assert client.beta.assistants.update(assistant.id, name="renamed").name == "renamed"

    f = client.files.create(file=("notes.txt", io.BytesIO(b"compat bytes")), purpose="assistants")
    assert f.bytes == 12 and f.filename == "notes.txt"
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == b"compat bytes"
    assert f.id in [x.id for x in client.files.list(purpose="assistants")]

    thread = client.beta.threads.create(messages=[{"role": "user", "content": "first"}], metadata={"a": "1"})
    for i in range(6):
        client.beta.threads.messages.create(
            thread.id,
            role="user",
            content=[{"type": "text", "text": f"part {i}"}],
            attachments=[{"file_id": f.id, "tools": [{"type": "code_interpreter"}]}] if i == 0 else None,
        )
    asc = [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id, order="asc", limit=2)]
    assert asc == ["first"] + [f"part {i}" for i in range(6)], asc
    desc = [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id, limit=3)]
    assert desc == list(reversed(asc)), desc

    page = client.beta.assistants.list(limit=1)
    assert len(page.data) == 1 and page.has_more in (True, False)

    try:
        client.beta.threads.retrieve("thread_missing")
    except openai.NotFoundError as exc:
        assert exc.body["message"] == "No thread found with id 'thread_missing'.", exc.body
    else:
        raise AssertionError("expected a 404")

    assert client.beta.threads.delete(thread.id).deleted
    assert client.beta.assistants.delete(assistant.id).deleted
    assert client.files.delete(f.id).deleted
    print("ok", openai.__version__)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
