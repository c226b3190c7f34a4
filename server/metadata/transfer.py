"""`dockyard migrate-metadata`: copy a single-node registry's SQLite metadata into PostgreSQL.

The whole copy is one PostgreSQL transaction, streamed table by table in batches (rows read from SQLite with
`fetchmany`, written with COPY), so memory stays flat however large the registry, and a failure at any point
(a constraint the source breaks, the database going away, Ctrl-C) leaves the target as it was: the command is safe
to run again. The source is read in one read transaction, a consistent snapshot; writes made to it after that are
not copied, so switch the registry to read-only (or stop it) first. Row ids are kept, so every reference between
rows survives as it was; identity sequences continue after the highest id copied. A target that already holds
data is refused unless `replace` is given (then it is emptied first, in the same transaction). Before committing,
the row count of every table is compared with the source's.

Blob bytes are not the metadata's: the blob store stays where it is (point every node at it).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Callable

from . import sqlite_path

# (table, columns, per-column conversion from SQLite's value), in an order that satisfies the foreign keys.
# repositories.tags_version and manifest_count are kept by the target's triggers as tags and manifests arrive.
TABLES: tuple[tuple[str, tuple[str, ...], dict[str, Callable]], ...] = (
    ("repositories", ("id", "name", "created_at"), {}),
    ("blobs", ("digest", "size", "created_at", "key"), {}),
    ("repository_blobs", ("repository_id", "digest", "created_at", "referenced"), {"referenced": bool}),
    ("manifest_content", ("digest", "data"), {"data": bytes}),
    ("manifests", ("repository_id", "digest", "media_type", "size", "artifact_type", "subject", "annotations",
                   "created_at"), {}),
    ("manifest_references", ("repository_id", "digest", "child", "kind"), {}),
    ("tags", ("repository_id", "name", "digest", "updated_at"), {}),
    ("uploads", ("id", "repository_id", "length", "state", "created_at", "updated_at", "monolithic", "owner"),
     {"monolithic": bool}),
    ("state", ("key", "value"), {}),
    ("pending_deletes", ("key", "created_at"), {}),
    ("events", ("id", "repository", "action", "payload", "created_at", "seq", "uid"), {}),
    ("event_deliveries", ("endpoint", "event", "repository", "seq", "parked_at", "attempts", "last_error"), {}),
    ("event_queues", ("endpoint", "repository", "pending", "attempts", "due", "lease_owner", "lease_until",
                      "last_error"), {}),
    ("event_endpoints", ("name", "last_success", "last_failure", "last_error", "delivered"), {}),
    ("cache_tags", ("repository", "tag", "checked_at"), {}),
    ("cache_pulls", ("repository", "digest", "pulled_at"), {}),
)
IDENTITIES = (("repositories", "id"), ("events", "id"))


class TransferError(RuntimeError):
    """The copy cannot be made; nothing was changed. The message says why."""


@dataclass
class TransferReport:
    rows: dict[str, int] = field(default_factory=dict)
    source_read_only: bool = False
    replaced: bool = False


def copy_sqlite_to_postgres(source: str, target: str, *, replace: bool = False, batch: int = 5000,
                            progress: Callable[[str, int], None] | None = None) -> TransferReport:
    """Copy the metadata at `source` (a sqlite:/// URL) into `target` (a postgresql:// URL), all or nothing."""
    import psycopg

    from .postgres import DOCKYARD, GC_KEY, PostgresMetadata, split_url
    from .sqlite import SqliteMetadata

    if not source.startswith("sqlite:///") or not target.startswith(("postgresql://", "postgres://")):
        raise TransferError("--from must be a sqlite:/// URL and --to a postgresql:// URL")
    path = sqlite_path(source)
    if not os.path.isfile(path):
        raise TransferError(f"no SQLite database at {path}")
    SqliteMetadata(path).close()  # bring an older registry's schema up to date first (it migrates as it opens)
    schema = PostgresMetadata(target, check_schema=False)
    try:
        schema.migrate()
    finally:
        schema.close()

    report = TransferReport(replaced=replace)
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        src.execute("BEGIN")  # one snapshot for every table
        row = src.execute("SELECT value FROM state WHERE key = 'read_only'").fetchone()
        report.source_read_only = bool(row and row[0] == "1")
        with psycopg.connect(split_url(target)[0]) as dst:  # one transaction: committed at the end, or nothing
            cur = dst.cursor()
            # Garbage collection and pushes through nodes already on the target wait until the copy is in.
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (DOCKYARD, GC_KEY))
            names = [table for table, _, _ in TABLES]
            cur.execute(" UNION ALL ".join(f"(SELECT '{t}' FROM {t} LIMIT 1)" for t in names))
            holding = [r[0] for r in cur.fetchall()]
            if holding and not replace:
                raise TransferError(f"the target database already holds data (in {', '.join(holding)}): "
                                    "pass --replace to empty it first")
            if holding:
                cur.execute(f"TRUNCATE {', '.join(names)} RESTART IDENTITY")
            for table, columns, convert in TABLES:
                report.rows[table] = _copy_table(src, cur, table, columns, convert, batch, progress)
            # SQLite numbers a repository's events by their ids: PostgreSQL's sequences go on after the highest.
            cur.execute("INSERT INTO event_streams AS s (repository, seq) SELECT repository, MAX(COALESCE(seq, id)) "
                        "FROM events GROUP BY repository "
                        "ON CONFLICT (repository) DO UPDATE SET seq = GREATEST(s.seq, excluded.seq)")
            for table, column in IDENTITIES:
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                            f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)")
            for table, _, _ in TABLES:
                cur.execute(f"SELECT COUNT(*) FROM {table}")
                copied = cur.fetchone()[0]
                if copied != report.rows[table]:
                    raise TransferError(f"{table}: {report.rows[table]} rows read, {copied} in the target")
    except psycopg.Error as exc:
        raise TransferError(f"the copy failed and was rolled back: {str(exc).strip().splitlines()[0]}") from None
    finally:
        src.close()
    return report


def _copy_table(src: sqlite3.Connection, cur, table: str, columns: tuple[str, ...], convert: dict,
                batch: int, progress) -> int:
    converters = [convert.get(column) for column in columns]
    rows = src.execute(f"SELECT {', '.join(columns)} FROM {table}")
    count = 0
    with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        while chunk := rows.fetchmany(batch):
            for row in chunk:
                copy.write_row([value if f is None or value is None else f(value)
                                for f, value in zip(converters, row)])
            count += len(chunk)
            if progress:
                progress(table, count)
    return count
