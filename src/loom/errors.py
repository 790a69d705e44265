"""Domain errors. Each carries its HTTP status and OpenAI's error `type`, `code` and `param`.

Nothing here imports a web framework: the API layer maps these to responses in one place.
"""

from __future__ import annotations


class LoomError(Exception):
    """Base of every error that is shown to an API client as-is."""

    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(LoomError):
    """400: the request is malformed or breaks a rule of the API."""

    status = 400
    type = "invalid_request_error"


class NotFound(LoomError):
    """404 `No <kind> found with id '<id>'.`: also what another project's ids answer."""

    status = 404
    type = "invalid_request_error"

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"No {kind} found with id '{object_id}'.")
        self.kind = kind
        self.object_id = object_id


class AuthenticationError(LoomError):
    status = 401
    type = "invalid_request_error"


class PayloadTooLarge(LoomError):
    status = 413
    type = "invalid_request_error"


class ServiceUnavailable(LoomError):
    status = 503
    type = "server_error"
