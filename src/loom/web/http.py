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
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: arrays or objects nested thousands deep, which the parser gives up on.
        raise InvalidRequest(_JSON_ERROR) from None
    if not isinstance(body, dict):
        if optional and body is None:
            return {}
        raise InvalidRequest(_JSON_ERROR)
    _check_values(body, 1, [])
    return body


# The deepest nesting of arrays and objects accepted in a body. OpenAI documents none for the Assistants
# API (its Structured Outputs allow 10 levels in a strict schema); Loom stores bodies as JSON, and
# pydantic-core's serializer and parser give up at 256 and 202 levels, so a deeper body would be
# accepted and then fail every read and write of what holds it. 64 leaves room for what wraps it.
MAX_JSON_DEPTH = 64


def _path(parts: list[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _check_string(value: str, parts: list[str | int]) -> None:
    if value.isascii():
        if "\0" not in value:
            return
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate ("\udfff" escaped, or its bytes): not Unicode text, and no database can
            # store it. Refused as a body that is not valid JSON text (RFC 8259 §8.2), OpenAI's wording.
            raise InvalidRequest(_JSON_ERROR) from None
    if "\0" in value:
        # PostgreSQL cannot store U+0000 in text or JSONB: refuse it on every database, with a 400 not a 500.
        path = _path(parts)
        raise InvalidRequest(
            f"Invalid '{path}': strings may not contain the null character (\\u0000).",
            param=path or None,
            code="invalid_value",
        )


def _check_values(value: Any, depth: int, parts: list[str | int]) -> None:
    """Refuse what the JSON parser accepts but Loom cannot keep: nesting past `MAX_JSON_DEPTH`, U+0000,
    and lone surrogates, in keys as in values."""
    if isinstance(value, str):
        _check_string(value, parts)
        return
    if not isinstance(value, dict | list):
        return
    if depth > MAX_JSON_DEPTH:
        path = _path(parts)
        raise InvalidRequest(
            f"Invalid '{path}': arrays and objects may be nested at most {MAX_JSON_DEPTH} levels deep.",
            param=path or None,
            code="invalid_value",
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_string(key, parts)
            parts.append(key)
            _check_values(item, depth + 1, parts)
            parts.pop()
    else:
        for i, item in enumerate(value):
            parts.append(i)
            _check_values(item, depth + 1, parts)
            parts.pop()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # pydantic-core's serializer: compact UTF-8 like json.dumps(ensure_ascii=False), about 3x faster.
        return pydantic_core.to_json(content)
