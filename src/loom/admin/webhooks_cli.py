"""`loom webhooks create|list|get|update|delete|rotate-secret|deliveries`: the endpoints API from the
command line, on the configured database (each prints the API's JSON object)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from loom.config import Settings
from loom.errors import LoomError
from loom.schemas.common import parse
from loom.services.common import ListParams
from loom.services.keys import DEFAULT_PROJECT
from loom.store.db import Database
from loom.store.migrate import migrate
from loom.webhooks import EVENT_TYPES
from loom.webhooks.schemas import EndpointCreate, EndpointUpdate
from loom.webhooks.service import WebhookService


def add_parser(sub: Any) -> None:
    p = sub.add_parser("webhooks", help="manage a project's webhook endpoints")
    p.add_argument("--project", default=DEFAULT_PROJECT, help="the project (default: default)")
    cmds = p.add_subparsers(dest="webhooks_command", required=True)
    events = f"an event type (repeat for several): {', '.join(EVENT_TYPES)}"
    create = cmds.add_parser("create", help="register an endpoint and print it with its signing secret")
    create.add_argument("--url", required=True)
    create.add_argument("--event", dest="events", action="append", required=True, help=events)
    create.add_argument("--name", default="")
    create.add_argument("--disabled", action="store_true", help="register it disabled")
    cmds.add_parser("list", help="list the project's endpoints")
    for name, text in (("get", "show one endpoint"), ("delete", "delete an endpoint")):
        cmds.add_parser(name, help=text).add_argument("endpoint_id")
    update = cmds.add_parser("update", help="change an endpoint")
    update.add_argument("endpoint_id")
    update.add_argument("--url")
    update.add_argument("--event", dest="events", action="append", help=events)
    update.add_argument("--name")
    update.add_argument("--enable", dest="enabled", action="store_const", const=True)
    update.add_argument("--disable", dest="enabled", action="store_const", const=False)
    rotate = cmds.add_parser("rotate-secret", help="a new signing secret, printed once")
    rotate.add_argument("endpoint_id")
    rotate.add_argument("--keep-old", action="store_true", help="keep signing with the old one for 24 hours")
    recent = cmds.add_parser("deliveries", help="the endpoint's recent deliveries, newest first")
    recent.add_argument("endpoint_id")
    recent.add_argument("--limit", type=int, default=20)


async def _call(service: WebhookService, args: argparse.Namespace) -> Any:
    project, command = args.project, args.webhooks_command
    if command == "create":
        body = {"url": args.url, "event_types": args.events, "name": args.name, "enabled": not args.disabled}
        return await service.create(project, parse(EndpointCreate, body))
    if command == "list":
        return (await service.list(project, ListParams(limit=100))).wire()
    if command == "get":
        return await service.get(project, args.endpoint_id)
    if command == "update":
        fields = {"url": args.url, "event_types": args.events, "name": args.name, "enabled": args.enabled}
        body = {k: v for k, v in fields.items() if v is not None}
        return await service.update(project, args.endpoint_id, parse(EndpointUpdate, body))
    if command == "delete":
        return await service.delete(project, args.endpoint_id)
    if command == "rotate-secret":
        return await service.rotate_secret(project, args.endpoint_id, keep_old=args.keep_old)
    return await service.deliveries(project, args.endpoint_id, max(1, min(args.limit, 100)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        try:
            await migrate(db.engine)
            result = await _call(WebhookService(db, allow_private=settings.webhooks_allow_private), args)
        except LoomError as exc:
            print(f"loom: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await db.dispose()
        print(json.dumps(result, indent=2))
        return 0

    return asyncio.run(go())
