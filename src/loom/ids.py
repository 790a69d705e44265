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
    # Loom's webhooks (`loom.webhooks`): endpoints, events, deliveries (each delivery's `webhook-id`).
    "webhook_endpoint": "we_",
    "event": "evt_",
    "webhook_delivery": "wh_",
}


def new_id(kind: str, length: int = 24) -> str:
    """A fresh id for an object of `kind` (a key of PREFIXES): unguessable, from one read of the
    system's random source (`secrets.choice` per character would be one system call each)."""
    # 62 symbols: a byte is kept when below 248 (4 x 62), so every symbol is equally likely.
    out: list[str] = []
    while len(out) < length:
        out.extend(_ALPHABET[b % 62] for b in secrets.token_bytes(length + 8) if b < 248)
    return PREFIXES[kind] + "".join(out[:length])
