"""An upstream's failure in Loom's terms: `map_error` turns an SDK exception into the `UpstreamError` a
run fails with (OpenAI's codes, one line naming the backend) and says whether a retry may help.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import openai

from loom.llm.errors import UpstreamError

__all__ = ["map_error", "one_line", "retry_after", "transient_500"]

log = logging.getLogger("loom.llm")


_CONTEXT_OVERFLOW = re.compile(
    r"context[_ ]length|context window|maximum context|too many tokens|too long|prompt is too long"
    r"|exceeds? the (?:maximum|max|context)|input length",
    re.IGNORECASE,
)


def _upstream_message(body: object, fallback: str) -> str:
    """The upstream's own error message out of an error body (OpenAI's `{"error": {...}}` or variants)."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            message = error.get("message")
            if isinstance(message, str) and message:
                return message
        elif isinstance(error, str) and error:
            return error
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
    elif isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def _upstream_code(body: object) -> str | None:
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            code = error.get("code") or error.get("type")
            if code is not None:
                return str(code)
    return None


# A 500 that says the request itself is wrong (the server's validation, a template or type error):
# sending the same request again gives the same answer.
_DETERMINISTIC = re.compile(
    r"validation|invalid|not supported|unsupported|not allowed|not found|must be|expected|unexpected|"
    r"missing|required|template|schema|grammar|(?:Type|Value|Key|Attribute|Index|Assertion|Template)Error|"
    r"Traceback|exceed",
    re.IGNORECASE,
)
# ...unless it says in so many words that trying again may help.
_TRANSIENT = re.compile(
    r"overload|try again|temporar|unavailable|timed? ?out|busy|capacity|had an error while processing|"
    r"connection|reset by peer|out of memory|loading model",
    re.IGNORECASE,
)
_PATH = re.compile(r"""(?:[A-Za-z]:)?(?:[\\/][\w.@~+-]+){2,}[\\/]?""")
_FILE_LINE = re.compile(r'File "[^"]*", line \d+(?:, in \S+)?')
MAX_MESSAGE_CHARS = 300


def one_line(message: str) -> str:
    """An upstream's error text as one short line for `last_error`: a traceback is reduced to its last
    line (the exception), file paths are taken out, whitespace is collapsed, the length is capped."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        tail = [line for line in lines if not line.startswith(("File ", "Traceback", "^", "~"))]
        lines = tail[-1:] if tail else []
    text = " ".join(lines)
    text = _FILE_LINE.sub("", text)
    text = _PATH.sub("…", text)
    text = re.sub(r"\s+", " ", text).strip(" :,")
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text or "no message"


def transient_500(message: str) -> bool:
    """Whether a 500's message looks like a passing failure (retried) rather than one the same request
    will meet again (not retried)."""
    return bool(_TRANSIENT.search(message)) or not _DETERMINISTIC.search(message)


def map_error(
    exc: BaseException, backend: str, *, timeout_s: float, streaming: bool = False
) -> tuple[UpstreamError, bool]:
    """The `UpstreamError` for an SDK exception, and whether a retry may help.

    `streaming`: the failure came after the first chunk (then transport failures are described as a
    lost or stalled stream, not as a failed connection). The message is one line that names the
    backend; what the upstream said in full (a traceback, say) is logged, never put in the message."""
    where = f"model backend '{backend}'"
    if isinstance(exc, openai.APITimeoutError):
        if streaming:
            text = f"The {where} stopped sending for {timeout_s:g}s in the middle of its answer"
        else:
            text = f"The request to {where} timed out after {timeout_s:g}s"
        return UpstreamError("server_error", text), True
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {one_line(str(cause))})" if cause is not None and str(cause) else ""
        if streaming:
            text = f"The connection to {where} was lost in the middle of its answer{detail}"
        else:
            text = f"Could not connect to {where}{detail}"
        return UpstreamError("server_error", text), True
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        raw = _upstream_message(exc.body, exc.response.reason_phrase or "no message")
        message = one_line(raw)
        if message != raw.strip():
            log.warning("model backend %r answered HTTP %s: %s", backend, status, raw)
        code = _upstream_code(exc.body)
        text = f"The {where} returned HTTP {status}: {message}"
        if status == 429:
            # Out of quota will not come back by waiting a few seconds.
            return UpstreamError("rate_limit_exceeded", text, status=status), code != "insufficient_quota"
        if status in (400, 413, 422):
            if code == "context_length_exceeded" or _CONTEXT_OVERFLOW.search(raw):
                text = f"The prompt is too long for the model's context window. {text}"
            return UpstreamError("invalid_prompt", text, status=status), False
        if status == 500:
            return UpstreamError("server_error", text, status=status), transient_500(raw)
        if status in (408, 409, 502, 503, 504) or status >= 520:  # 520+: proxies' "origin unreachable"
            return UpstreamError("server_error", text, status=status), True
        if status > 500:  # 501 Not Implemented, 505…: the same request gets the same answer
            return UpstreamError("server_error", text, status=status), False
        # 401/403/404…: a configuration problem; retrying will not fix it.
        return UpstreamError("server_error", text, status=status), False
    if isinstance(exc, openai.APIError):
        # An error event inside an otherwise successful stream.
        raw = _upstream_message(exc.body, exc.message)
        message = one_line(raw)
        if message != raw.strip():
            log.warning("model backend %r reported while streaming: %s", backend, raw)
        code = _upstream_code(exc.body)
        text = f"The {where} reported an error while streaming: {message}"
        if code == "context_length_exceeded":
            return UpstreamError("invalid_prompt", text), False
        if code in ("rate_limit_exceeded", "rate_limit_error"):
            return UpstreamError("rate_limit_exceeded", text), True
        return UpstreamError("server_error", text), True
    # Malformed JSON or SSE, or anything else: say what, not where in our code.
    log.warning("model backend %r sent an invalid response", backend, exc_info=exc)
    return UpstreamError("server_error", f"The {where} sent an invalid response ({type(exc).__name__})"), False


def retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, openai.APIStatusError):
        value = exc.response.headers.get("retry-after")
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
