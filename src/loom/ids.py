"""OpenAI-style prefixed identifiers (`asst_…`, `file-…`)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits

PREFIXES = {
    "assistant": "asst_",
    "thread": "thread_",
    "message": "msg_",
    "run": "run_",
    "step": "step_",
    "call": "call_",
    "file": "file-",
    "vector_store": "vs_",
    "file_batch": "vsfb_",
    "upload": "upload_",
    "part": "part_",
}


def new_id(kind: str, length: int = 24) -> str:
    """A fresh id for an object of `kind` (a key of PREFIXES)."""
    return PREFIXES[kind] + "".join(secrets.choice(_ALPHABET) for _ in range(length))
