"""Image content (`image_url`, `image_file`) reaches the model as Chat Completions image parts."""

from __future__ import annotations

import base64
import io
from typing import Any

import openai

from tests.fakes.upstream import FakeUpstream

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_image_url_and_image_file_parts(client: openai.OpenAI, upstream: FakeUpstream, assistant: Any) -> None:
    image = client.files.create(file=("dot.png", io.BytesIO(PNG), "image/png"), purpose="vision")
    thread = client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                    {"type": "image_file", "image_file": {"file_id": image.id, "detail": "high"}},
                ],
            }
        ]
    )
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    user = upstream.last_request.body["messages"][-1]
    assert user["role"] == "user"
    parts = user["content"]
    assert parts[0] == {"type": "text", "text": "What is in these?"}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}}
    assert parts[2]["type"] == "image_url" and parts[2]["image_url"]["detail"] == "high"
    url = parts[2]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG
