"""Webhooks: a project's endpoints, an outbox written in the transaction of the status change that
causes each event, and signed, retried delivery (Standard Webhooks, as OpenAI's own webhooks, so the
official SDK's `client.webhooks.unwrap` verifies and parses what Loom sends).

- `tables`: endpoints and deliveries (the outbox).
- `outbox`: `record…` hooks called at the status writes, in their transaction.
- `service`: the endpoints API's rules (`/v1/loom/webhooks`, `loom webhooks …`).
- `addresses`: which URLs may be called (SSRF), checked at registration and at each delivery.
- `delivery`: the worker that claims due deliveries and sends them.
"""

from __future__ import annotations

RUN_EVENTS = {
    "requires_action": "thread.run.requires_action",
    "completed": "thread.run.completed",
    "failed": "thread.run.failed",
    "cancelled": "thread.run.cancelled",
    "expired": "thread.run.expired",
    "incomplete": "thread.run.incomplete",
}
FILE_EVENTS = {"completed": "vector_store.file.completed", "failed": "vector_store.file.failed"}
BATCH_COMPLETED = "vector_store.file_batch.completed"

EVENT_TYPES: tuple[str, ...] = (*RUN_EVENTS.values(), *FILE_EVENTS.values(), BATCH_COMPLETED)
