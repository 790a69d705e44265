"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams): request ids and last-resort 500s."""

from __future__ import annotations

import json
import logging
import random
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("loom.api")

_INTERNAL = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}

_NUL_IN_URL = {
    "error": {
        "message": "Invalid URL: the path and query string may not contain null characters (%00).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_value",
    }
}


class RequestIdMiddleware:
    """Every response carries `x-request-id` (and `x-loom-replica`, the replica that answered, when given);
    an unhandled exception becomes a 500 that says nothing internal."""

    def __init__(self, app: ASGIApp, replica: str = "") -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Not a secret: a PRNG is enough, and avoids a getrandom() system call per request.
        request_id = f"req_{random.getrandbits(128):032x}"
        scope.setdefault("state", {})["request_id"] = request_id
        if "\0" in scope["path"] or b"%00" in scope.get("query_string", b""):
            # No id or filter can contain U+0000, and PostgreSQL refuses it in a query parameter (a 500).
            await _send_json(send, 400, _NUL_IN_URL, request_id)
            return
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if self.replica:
                    headers.append((b"x-loom-replica", self.replica))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s (request %s)", scope.get("method"), scope.get("path"), request_id)
            if started:
                raise
            await _send_json(send, 500, _INTERNAL, request_id)


async def _send_json(send: Send, status: int, content: dict[str, Any], request_id: str) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
