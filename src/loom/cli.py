"""`loom serve`, `loom migrate`, `loom keys create|list|revoke`, `loom sandbox check|setup`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence

from loom.config import Settings
from loom.sandbox.setup import add_arguments as setup_arguments
from loom.services import keys
from loom.store.db import Database
from loom.store.migrate import migrate

log = logging.getLogger("loom")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


async def _has_keys(settings: Settings) -> bool:
    if settings.api_keys:
        return True
    db = Database(settings.effective_database_url)
    try:
        await migrate(db.engine)
        # Any key ever created counts, revoked or not: the server is then closed, never open (see KeyRing).
        return bool(await keys.list_keys(db))
    finally:
        await db.dispose()


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from loom.api.app import create_app
    from loom.container import Container

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not asyncio.run(_has_keys(settings)):
        if not _is_loopback(args.host) and not args.insecure:
            print(
                f"loom: refusing to listen on {args.host}: no API key is configured, so any bearer token would be "
                "accepted. Set LOOM_API_KEYS or run `loom keys create`, or pass --insecure.",
                file=sys.stderr,
            )
            return 2
        print(
            "loom: no API key configured: accepting any bearer token"
            + (" on a non-loopback address (--insecure)" if not _is_loopback(args.host) else " (loopback only)"),
            file=sys.stderr,
        )
    app = create_app(Container(settings))
    # What is loaded by now (modules, routes, tables, schemas: ~170k objects) lives as long as the process.
    # Frozen, it is left out of the collector's full passes, each of which would stall every request for
    # ~100 ms (the p99 of a busy server).
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, lifespan="on")
    return 0


def _run_migrate(settings: Settings) -> int:
    async def go() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        try:
            await migrate(db.engine)
        finally:
            await db.dispose()

    asyncio.run(go())
    print("migrations applied")
    return 0


def _run_keys(args: argparse.Namespace, settings: Settings) -> int:
    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        try:
            await migrate(db.engine)
            if args.keys_command == "create":
                info, key = await keys.create_key(db, args.project)
                print(key)
                print(f"created {info.id} for project '{info.project}'", file=sys.stderr)
            elif args.keys_command == "list":
                for k in await keys.list_keys(db, args.project):
                    state = "revoked" if k.revoked_at is not None else "active"
                    print(f"{k.id}\t{k.project}\t{k.hint}\t{state}")
            else:
                if not await keys.revoke_key(db, args.key_id):
                    print(f"no active key with id {args.key_id}", file=sys.stderr)
                    return 1
                print(f"revoked {args.key_id}")
            return 0
        finally:
            await db.dispose()

    return asyncio.run(go())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loom", description="The OpenAI Assistants API, self-hosted.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve the API under /v1")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument("--insecure", action="store_true", help="allow a non-loopback address with no API key")
    p_serve.add_argument("--log-level", default="info")
    sub.add_parser("migrate", help="apply database migrations")
    p_keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser("create", help="create a key and print it")
    p_create.add_argument("--project", default=keys.DEFAULT_PROJECT)
    p_list = keys_sub.add_parser("list", help="list keys")
    p_list.add_argument("--project", default=None)
    p_revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    p_revoke.add_argument("key_id")
    p_sandbox = sub.add_parser("sandbox", help="the code interpreter's sandbox")
    sandbox_sub = p_sandbox.add_subparsers(dest="sandbox_command", required=True)
    sandbox_sub.add_parser("check", help="report what isolation this machine provides")
    p_setup = sandbox_sub.add_parser("setup", help="build the sandbox's Python environment")
    setup_arguments(p_setup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.load()
    if args.command == "serve":
        return serve(args, settings)
    if args.command == "migrate":
        return _run_migrate(settings)
    if args.command == "sandbox":
        if args.sandbox_command == "check":
            from loom.sandbox.check import check_isolation

            report = check_isolation(settings)
            print(report.format())
            return 0 if report.available else 1
        from loom.sandbox.setup import run as setup_run

        return setup_run(args, settings)
    return _run_keys(args, settings)


if __name__ == "__main__":
    sys.exit(main())
