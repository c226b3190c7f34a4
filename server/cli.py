"""The `dockyard` command: `serve` runs the registry under gunicorn; `gc`, `user`, `migrate`, `migrate-metadata`,
`events` manage it."""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .errors import Unavailable
from .metadata.postgres_schema import SchemaError


def _serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from .app import create_app
    from .serving import gunicorn_settings

    config = load_config(args.config, overrides={"bind": args.bind, "data": args.data, "workers": args.workers})
    # Built before gunicorn starts (preload_app builds it once in the master anyway): a database that is down or
    # a schema this release cannot use stops `serve` with a message, not a traceback.
    app = create_app(config)

    class Server(BaseApplication):
        def load_config(self) -> None:
            # The same settings as deploy/gunicorn.conf.py: one source of truth (server/serving.py).
            for key, value in gunicorn_settings(config).items():
                if key in self.cfg.settings:  # e.g. control_socket_disable exists from gunicorn 24 on
                    self.cfg.set(key, value)

        def load(self):
            return app

    Server().run()
    return 0


def _gc(args: argparse.Namespace) -> int:
    import json

    from .app import build_registry

    config = load_config(args.config, overrides={"data": args.data})
    if not config.database and not config.data_path.joinpath("registry.db").exists():
        print(f"dockyard gc: no registry in {config.data_path} (registry.db missing)", file=sys.stderr)
        return 2
    registry = build_registry(config)
    report = registry.collect_garbage(dry_run=args.dry_run, grace=args.grace, delete_untagged=args.delete_untagged)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for manifest in report.manifests:
        print(f"manifest {manifest['repository']}@{manifest['digest']}")
    for digest in report.blobs:
        print(f"blob {digest}")
    print(f"{verb} {report.manifests_removed} manifests and {report.blobs_removed} blobs, "
          f"{report.bytes_freed} bytes freed ({_human(report.bytes_freed)}); {report.links_removed} unused links, "
          f"{report.uploads_purged} expired or abandoned uploads ({_human(report.upload_bytes_freed)}), "
          f"{report.orphan_files_removed} orphan files ({_human(report.orphan_bytes_freed)}); "
          f"{report.seconds:.2f}s")
    return 0


def _fsck(args: argparse.Namespace) -> int:
    import json

    from .app import build_registry

    config = load_config(args.config, overrides={"data": args.data})
    if not config.database and not config.data_path.joinpath("registry.db").exists():
        print(f"dockyard fsck: no registry in {config.data_path} (registry.db missing)", file=sys.stderr)
        return 2
    registry = build_registry(config, recover=False)
    report = registry.fsck(repair=args.repair, verify_digests=args.verify_digests, grace=args.grace)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(f"{problem.kind}: {problem.subject}: {problem.detail}{' (repaired)' if problem.repaired else ''}")
        print(f"checked {report.blobs_checked} blobs, {report.objects_checked} stored objects, "
              f"{report.uploads_checked} upload sessions"
              + (f", verified {report.digests_verified} digests" if args.verify_digests else "")
              + f": {len(report.problems)} problems"
              + (f", {sum(p.repaired for p in report.problems)} repaired" if args.repair else "")
              + f"; {report.seconds:.2f}s")
    return 0 if report.clean else 1


def _migrate(args: argparse.Namespace) -> int:
    import time

    from .metadata import open_metadata

    config = load_config(args.config, overrides={"data": args.data, "database": args.database})
    if not config.database:
        config.data_path.mkdir(parents=True, exist_ok=True)
    metadata = open_metadata(config, clock=time.time, check_schema=False)
    try:
        applied = metadata.migrate()
    finally:
        metadata.close()
    names = ", ".join(applied or ())
    print(f"dockyard migrate: {metadata.driver}: " + (f"applied {names}" if names else "the schema is up to date"))
    return 0


def _migrate_metadata(args: argparse.Namespace) -> int:
    from .metadata import redact
    from .metadata.transfer import TransferError, copy_sqlite_to_postgres

    def progress(table: str, rows: int) -> None:
        print(f"  {table}: {rows} rows", file=sys.stderr)

    try:
        report = copy_sqlite_to_postgres(args.source, args.target, replace=args.replace, batch=args.batch,
                                         progress=progress if args.verbose else None)
    except TransferError as exc:
        print(f"dockyard migrate-metadata: {exc}; the target is unchanged", file=sys.stderr)
        return 2
    if not report.source_read_only:
        print("dockyard migrate-metadata: warning: the source registry was not in read-only mode; anything written "
              "to it after the copy started is not in the target", file=sys.stderr)
    copied = ", ".join(f"{rows} {table}" for table, rows in report.rows.items())
    print(f"copied {copied} into {redact(args.target)}")
    return 0


def _migrate_blobs(args: argparse.Namespace) -> int:
    import json

    from .app import build_registry
    from .storage import open_store

    config = load_config(args.config, overrides={"data": args.data})
    source_config = load_config(args.from_config, overrides={"data": args.from_data})
    if source_config.storage == config.storage and source_config.data_path == config.data_path:
        print("dockyard migrate-blobs: the source and the target are the same store", file=sys.stderr)
        return 2
    registry = build_registry(config, recover=False)
    source = open_store(source_config)

    def progress(report) -> None:
        print(f"  {report.copied} copied ({_human(report.bytes_copied)}), {report.skipped} already there",
              file=sys.stderr)

    try:
        report = registry.copy_blobs_from(source, progress=progress if args.verbose else None)
    finally:
        source.close()
        registry.close()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for digest, why in report.failed:
            print(f"failed: {digest}: {why}")
        print(f"copied {report.copied} blobs ({_human(report.bytes_copied)}), {report.skipped} already in the "
              f"target, {len(report.failed)} failed; {report.seconds:.2f}s")
    return 1 if report.failed else 0


def _events(args: argparse.Namespace) -> int:
    """Event delivery: each endpoint's state, its parked events, and replaying them (the admin API's, offline)."""
    import datetime
    import json

    from .app import build_registry
    from .errors import RegistryError

    config = load_config(args.config, overrides={"data": args.data, "database": args.database})
    if not config.database and not config.data_path.joinpath("registry.db").exists():
        print(f"dockyard events: no registry in {config.data_path} (registry.db missing)", file=sys.stderr)
        return 2

    def when(timestamp):
        return "-" if timestamp is None else \
            datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    registry = build_registry(config, recover=False)
    try:
        if args.action == "status":
            endpoints = registry.event_status()
            if args.json:
                print(json.dumps({"endpoints": endpoints}, indent=2))
                return 0
            if not endpoints:
                print("no notification endpoints configured, and no delivery state")
            for e in endpoints:
                print(f"{e['name']}{'' if e['configured'] else ' (not configured any more)'}: backlog {e['backlog']}, "
                      f"parked {e['parked']}, retrying {e['retrying']}, delivered {e['delivered']}, "
                      f"oldest waiting {when(e['oldest_pending'])}, last success {when(e['last_success'])}, "
                      f"last failure {when(e['last_failure'])}" + (f" ({e['last_error']})" if e['last_error'] else ""))
            return 0
        if not args.endpoint:
            print(f"dockyard events {args.action}: name the endpoint", file=sys.stderr)
            return 2
        if args.action == "parked":
            rows, more = registry.parked_events(args.endpoint, args.limit, args.after)
            if args.json:
                print(json.dumps({"endpoint": args.endpoint, "events": rows, "more": more}, indent=2))
                return 0
            for row in rows:
                target = row["payload"].get("target", {})
                reference = target.get("tag") or target.get("digest") or ""
                print(f"{row['uid']}  #{row['number']}  {row['action']}  {row['repository']}"
                      f"{'@' if reference.startswith('sha256:') else ':' if reference else ''}{reference}  "
                      f"attempts {row['attempts']}, parked {when(row['parked_at'])}: {row['last_error']}")
            print(f"{len(rows)} parked events shown" + (f"; more after --after {rows[-1]['number']}" if more else ""))
            return 0
        count = registry.replay_events(args.endpoint, args.ids or None)
        print(f"dockyard events replay: {count} events queued again for {args.endpoint}")
        return 0
    except RegistryError as exc:
        print(f"dockyard events: {exc.message}: {json.dumps(exc.detail, default=str)[:500]}", file=sys.stderr)
        return 2
    finally:
        registry.close()


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _htpasswd_path(args: argparse.Namespace) -> str | None:
    if args.htpasswd:
        return args.htpasswd
    config = load_config(args.config)
    for entry in config.middleware:
        if entry["name"] == "auth" and entry["options"].get("htpasswd"):
            return entry["options"]["htpasswd"]
    return None


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass
    password = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != password:
        raise ValueError("the passwords differ")
    return password


def _user(args: argparse.Namespace) -> int:
    from dockyard.middleware import htpasswd

    path = _htpasswd_path(args)
    if path is None:
        print("dockyard user: no htpasswd file: pass --htpasswd FILE, or configure the auth middleware's "
              "htpasswd option (--config FILE)", file=sys.stderr)
        return 2
    if args.action == "list":
        for name in sorted(htpasswd.read_users(path)):
            print(name)
        return 0
    if not args.name:
        print(f"dockyard user {args.action}: a user name is required", file=sys.stderr)
        return 2
    try:
        if args.action == "add":
            new = htpasswd.add_user(path, args.name, _read_password(args), rounds=args.rounds)
            print(f"{'added' if new else 'updated'} {args.name} in {path}")
        elif not htpasswd.remove_user(path, args.name):
            print(f"dockyard user remove: no user {args.name!r} in {path}", file=sys.stderr)
            return 1
        else:
            print(f"removed {args.name} from {path}")
    except ValueError as exc:
        print(f"dockyard user {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """Load the configuration and build the middleware chain as `serve` would; print the effective settings."""
    import json

    from .config import SETTINGS
    from .pipeline import build_request_path

    config = load_config(args.config, overrides={"bind": args.bind, "data": args.data, "workers": args.workers})
    try:
        if config.accel_redirect and not config.accel_redirect.startswith("/"):
            raise ConfigError(f"setting 'accel_redirect': must be a location path starting with '/', got "
                              f"{config.accel_redirect!r}")
        path = build_request_path(config, None)
    except ConfigError:
        raise
    except Exception as exc:  # a middleware refusing its options, or one that cannot be imported
        print(f"dockyard: configuration error: {exc}", file=sys.stderr)
        return 2
    print(f"# effective configuration{' from ' + config.config if config.config else ' (no config file)'}")
    for name in SETTINGS:
        if name == "middleware":
            continue
        value = getattr(config, name)
        if name == "database":
            from .metadata import redact
            value = redact(value)
        shown = str(value).lower() if isinstance(value, bool) else json.dumps(value) if isinstance(value, (str, int)) \
            else repr(value)
        print(f"{name} = {shown}")
    print(f"# workers actually started: {config.worker_count}")
    print("# request path, in order (the read-only stage joins when the registry runs):")
    for stage, name, component in path.stages:
        print(f"#   {stage}: {type(component).__module__}.{type(component).__qualname__}")
    return 0


def _bounded(low: int, high: int):
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or len(text) > 20 or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}")
        return int(text)
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dockyard", description="A container image registry.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the registry under gunicorn")
    serve.add_argument("--bind", help="HOST:PORT to listen on (default 0.0.0.0:5000)")
    serve.add_argument("--data", help="data directory (default ./data)")
    serve.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    serve.add_argument("--workers", type=int, help="worker processes (default: two per core)")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check-config", help="load the config and the middleware chain, print the "
                                                     "effective settings; exit 2 with the message on error")
    check.add_argument("--bind", help="as for serve")
    check.add_argument("--data", help="as for serve")
    check.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    check.add_argument("--workers", type=int, help="as for serve")
    check.set_defaults(func=_check_config)
    gc = commands.add_parser("gc", help="collect garbage (safe while the registry runs)")
    gc.add_argument("--data", help="data directory (default ./data, as for serve)")
    gc.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    gc.add_argument("--dry-run", action="store_true", help="report what would go and the bytes freed; change nothing")
    gc.add_argument("--grace", type=int, metavar="SECONDS",
                    help="protect blobs uploaded this recently and not yet used by a manifest (default: gc_grace)")
    gc.add_argument("--delete-untagged", action="store_true",
                    help="also delete untagged manifests (never children of a tagged index or referrers of a "
                         "live manifest)")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.set_defaults(func=_gc)
    check_store = commands.add_parser("fsck", help="check that the metadata and the blob store agree, both "
                                                   "ways; exit 1 when they do not")
    check_store.add_argument("--data", help="data directory (default ./data, as for serve)")
    check_store.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    check_store.add_argument("--repair", action="store_true",
                             help="fix what is safe on a running registry: forget rows whose bytes are gone, delete "
                                  "stored objects and upload data nothing names, finish interrupted deletes")
    check_store.add_argument("--verify-digests", action="store_true",
                             help="also read every blob and check its digest")
    check_store.add_argument("--grace", type=int, metavar="SECONDS",
                             help="leave stored objects younger than this alone (a commit may be a moment from its "
                                  "row; default: gc_grace)")
    check_store.add_argument("--json", action="store_true", help="print the report as JSON")
    check_store.set_defaults(func=_fsck)
    migrate = commands.add_parser("migrate", help="create or upgrade the metadata database's schema (PostgreSQL: "
                                                  "run once per upgrade, before or while nodes restart)")
    migrate.add_argument("--data", help="data directory (default ./data, as for serve)")
    migrate.add_argument("--database", help="database URL (default: the `database` setting)")
    migrate.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    migrate.set_defaults(func=_migrate)
    move = commands.add_parser("migrate-metadata", help="copy a registry's SQLite metadata into PostgreSQL, all or "
                                                          "nothing (switch the registry to read-only first)")
    move.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH", help="the SQLite database")
    move.add_argument("--to", dest="target", required=True, metavar="postgresql://...",
                      help="the PostgreSQL database (migrated first if needed)")
    move.add_argument("--replace", action="store_true", help="empty a target that already holds data first")
    move.add_argument("--batch", type=int, default=5000, help="rows read and written at a time (default 5000)")
    move.add_argument("--verbose", action="store_true", help="print progress per table")
    move.set_defaults(func=_migrate_metadata)
    blobs = commands.add_parser("migrate-blobs", help="copy every blob from another blob store (the `--from-config` "
                                                       "file's [storage]) into this one, and point the metadata at "
                                                       "the copies; resumable (switch the registry to read-only "
                                                       "first)")
    blobs.add_argument("--from-config", required=True, metavar="FILE",
                       help="a config file whose `[storage]` (and `data`) name the store the blobs are in now")
    blobs.add_argument("--from-data", help="the source's data directory, for a filesystem source (default: the "
                                           "--from-config file's `data`)")
    blobs.add_argument("--config", help="the registry's config file (or DOCKYARD_CONFIG): its `database` and its "
                                        "`[storage]`, the target")
    blobs.add_argument("--data", help="data directory (default ./data, as for serve)")
    blobs.add_argument("--verbose", action="store_true", help="print progress every 100 blobs")
    blobs.add_argument("--json", action="store_true", help="print the report as JSON")
    blobs.set_defaults(func=_migrate_blobs)


    events = commands.add_parser("events", help="event delivery: each notification endpoint's state (backlog, "
                                                "parked, last success), parked events, replay")
    events.add_argument("action", choices=("status", "parked", "replay"))
    events.add_argument("endpoint", nargs="?", help="the endpoint's name (parked, replay)")
    events.add_argument("--id", dest="ids", action="append", metavar="EVENT_ID",
                        help="replay: only this event (parked, or delivered and still retained); repeatable. "
                             "Default: every parked event of the endpoint")
    events.add_argument("--limit", type=_bounded(1, 1000), default=100, metavar="1..1000",
                        help="parked: events shown (default 100)")
    events.add_argument("--after", type=_bounded(0, 2 ** 62), default=0, metavar="NUMBER",
                        help="parked: events after this number")
    events.add_argument("--json", action="store_true", help="status, parked: print JSON")
    events.add_argument("--data", help="data directory (default ./data, as for serve)")
    events.add_argument("--database", help="database URL (default: the `database` setting)")
    events.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    events.set_defaults(func=_events)
    user = commands.add_parser("user", help="manage the users of an htpasswd file (bcrypt)")
    user.add_argument("action", choices=("add", "remove", "list"))
    user.add_argument("name", nargs="?", help="user name (add, remove)")
    user.add_argument("--htpasswd", metavar="FILE",
                      help="htpasswd file (default: the auth middleware's htpasswd option in the config file)")
    user.add_argument("--config", help="TOML config file (or DOCKYARD_CONFIG)")
    user.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    user.add_argument("--rounds", type=int, default=10, choices=range(4, 16), metavar="4..15",
                      help="bcrypt cost (default 10)")
    user.set_defaults(func=_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"dockyard: configuration error: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:
        print(f"dockyard: database schema: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"dockyard: {exc.message}: {exc.detail.get('database') if isinstance(exc.detail, dict) else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
