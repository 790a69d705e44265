"""The one error a backend raises: what a run's `last_error` shows."""

from __future__ import annotations

from typing import Literal, TypeAlias

UpstreamErrorCode: TypeAlias = Literal["rate_limit_exceeded", "server_error", "invalid_prompt"]


class UpstreamError(Exception):
    """The model upstream failed. `code` is a run's `last_error.code`; `message` says what happened
    (HTTP status and the upstream's own message), never a traceback.

    `status` is the upstream's HTTP status when there was one (None for timeouts and connection errors).
    """

    def __init__(self, code: UpstreamErrorCode, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code: UpstreamErrorCode = code
        self.message = message
        self.status = status

    def last_error(self) -> dict[str, str]:
        """The run's `last_error` object."""
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"UpstreamError({self.code!r}, {self.message!r}, status={self.status!r})"
