"""The rules of `/v1/loom/webhooks` (and `loom webhooks …`): a project's endpoints and their deliveries.

Scoped to the project like every object of /v1: another project's endpoint id is a 404.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import sqlalchemy as sa

from loom import ids
from loom.clock import now
from loom.errors import NotFound
from loom.store.db import Database
from loom.store.repo import Collection, Page, PageParams
from loom.webhooks.addresses import check_url
from loom.webhooks.schemas import EndpointCreate, EndpointUpdate
from loom.webhooks.tables import webhook_deliveries, webhook_endpoints

endpoints = Collection(webhook_endpoints)
_KIND = "webhook endpoint"
_KEEP_OLD_S = 24 * 3600


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _hint(secret: str) -> str:
    return f"whsec_…{secret[-4:]}"


def delivery_wire(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "webhook_endpoint.delivery",
        "endpoint_id": row.endpoint_id,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "created_at": int(row.created_at),
        "next_attempt_at": int(row.next_attempt_at) if row.status == "pending" else None,
        "delivered_at": int(row.delivered_at) if row.delivered_at is not None else None,
        "last_status_code": row.last_status_code,
        "last_error": row.last_error,
    }


class WebhookService:
    def __init__(self, db: Database, *, allow_private: bool) -> None:
        self.db = db
        self.allow_private = allow_private

    async def create(self, project: str, req: EndpointCreate) -> dict[str, Any]:
        await check_url(req.url, allow_private=self.allow_private)
        secret = new_secret()
        created = now()
        wire: dict[str, Any] = {
            "id": ids.new_id("webhook_endpoint"),
            "object": "webhook_endpoint",
            "created_at": created,
            "updated_at": created,
            "name": req.name,
            "url": req.url,
            "event_types": list(dict.fromkeys(req.event_types)),
            "enabled": req.enabled,
            "signing_secret_hint": _hint(secret),
        }
        async with self.db.write() as conn:
            await endpoints.insert(conn, project, wire, enabled=req.enabled, secret=secret)
        return {**wire, "signing_secret": secret}

    async def list(self, project: str, params: PageParams) -> Page:
        async with self.db.read() as conn:
            return await endpoints.list(conn, project, params)

    async def get(self, project: str, endpoint_id: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            wire = await endpoints.get(conn, project, endpoint_id)
        if wire is None:
            raise NotFound(_KIND, endpoint_id)
        return wire

    async def update(self, project: str, endpoint_id: str, req: EndpointUpdate) -> dict[str, Any]:
        if req.url is not None:
            await check_url(req.url, allow_private=self.allow_private)
        async with self.db.write() as conn:
            row = await endpoints.get_row(conn, project, endpoint_id, lock=True)
            if row is None:
                raise NotFound(_KIND, endpoint_id)
            wire = dict(row.data)
            changes = {k: v for k, v in req.model_dump(exclude_none=True).items()}
            if "event_types" in changes:
                changes["event_types"] = list(dict.fromkeys(changes["event_types"]))
            if any(wire.get(k) != v for k, v in changes.items()):
                wire.update(changes, updated_at=now())
            await endpoints.replace(conn, project, wire, enabled=wire["enabled"])
        return wire

    async def delete(self, project: str, endpoint_id: str) -> dict[str, Any]:
        async with self.db.write() as conn:
            if not await endpoints.delete(conn, project, endpoint_id):
                raise NotFound(_KIND, endpoint_id)
            d = webhook_deliveries
            await conn.execute(d.delete().where(d.c.endpoint_id == endpoint_id, d.c.project == project))
        return {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}

    async def rotate_secret(self, project: str, endpoint_id: str, *, keep_old: bool) -> dict[str, Any]:
        """A new secret; the old one stops signing at once, or in 24 hours when `keep_old`."""
        secret = new_secret()
        async with self.db.write() as conn:
            row = await endpoints.get_row(conn, project, endpoint_id, lock=True)
            if row is None:
                raise NotFound(_KIND, endpoint_id)
            wire = dict(row.data)
            wire.update(signing_secret_hint=_hint(secret), updated_at=now())
            old, until = (row.secret, now() + _KEEP_OLD_S) if keep_old else (None, None)
            await endpoints.replace(conn, project, wire, secret=secret, old_secret=old, old_secret_until=until)
        return {**wire, "signing_secret": secret}

    async def deliveries(self, project: str, endpoint_id: str, limit: int) -> dict[str, Any]:
        """The endpoint's most recent deliveries, newest first."""
        d = webhook_deliveries
        async with self.db.read() as conn:
            if await endpoints.get(conn, project, endpoint_id) is None:
                raise NotFound(_KIND, endpoint_id)
            rows = (
                await conn.execute(
                    sa.select(d)
                    .where(d.c.endpoint_id == endpoint_id, d.c.project == project)
                    .order_by(d.c.seq.desc())
                    .limit(limit + 1)
                )
            ).all()
        data = [delivery_wire(r) for r in rows[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(rows) > limit,
        }
