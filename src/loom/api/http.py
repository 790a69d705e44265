"""Request reading and response writing shared by all routes."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
from starlette.requests import Request
from starlette.responses import Response

from loom.errors import InvalidRequest, PayloadTooLarge

_JSON_ERROR = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


# The largest JSON body accepted. The biggest legitimate one is a thread created with 32 messages of long
# text; anything far beyond that is refused before it is held in memory.
MAX_JSON_BYTES = 32 * 1024 * 1024


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body too large: a JSON body may be at most {MAX_JSON_BYTES} bytes.", code="request_too_large"
    )


async def _read_bounded(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await _read_bounded(request)
    if not raw.strip(b" \t\r\n"):  # JSON's whitespace only: a lone vertical tab is not an empty body
        if optional:
            return {}
        raise InvalidRequest(_JSON_ERROR)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(_JSON_ERROR) from None
    if not isinstance(body, dict):
        if optional and body is None:
            return {}
        raise InvalidRequest(_JSON_ERROR)
    if b"\\u0000" in raw:
        _refuse_nul(body, "")
    return body


def _refuse_nul(value: Any, path: str) -> None:
    """PostgreSQL cannot store U+0000 in text or JSONB: refuse it on every database, with a 400 not a 500."""
    if isinstance(value, str):
        if "\0" in value:
            raise InvalidRequest(
                f"Invalid '{path}': strings may not contain the null character (\\u0000).",
                param=path or None,
                code="invalid_value",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, path)
            _refuse_nul(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_nul(item, f"{path}[{i}]")


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # pydantic-core's serializer: compact UTF-8 like json.dumps(ensure_ascii=False), about 3x faster.
        return pydantic_core.to_json(content)
