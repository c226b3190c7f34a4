"""Read-only probes of the metadata database for readiness checks and metrics scrapes.

Each probe opens a short-lived connection of its own instead of borrowing the worker's: a scrape or a health
check then never waits behind, or interleaves with, the transaction of a request on the shared connection, and a
database that cannot be opened shows as exactly that.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StorageUsage:
    blobs: int
    blob_bytes: int
    upload_sessions: int


def _connect(path: str | os.PathLike, timeout: float) -> sqlite3.Connection:
    if not os.path.exists(path):  # sqlite3 would create an empty database: that is not "reachable"
        raise sqlite3.OperationalError(f"database {os.fspath(path)!r} does not exist")
    return sqlite3.connect(path, timeout=timeout, isolation_level=None)


def ping(path: str | os.PathLike, *, timeout: float = 5.0) -> None:
    """Raise sqlite3.Error unless the database opens and its schema answers a query."""
    with closing(_connect(path, timeout)) as conn:
        conn.execute("SELECT 1 FROM repositories LIMIT 1").fetchall()


def storage_usage(path: str | os.PathLike, *, timeout: float = 5.0) -> StorageUsage:
    """Committed blobs (count and bytes, each stored blob once) and open upload sessions."""
    with closing(_connect(path, timeout)) as conn:
        blobs, blob_bytes = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
        sessions = conn.execute("SELECT COUNT(*) FROM uploads").fetchone()[0]
    return StorageUsage(blobs, blob_bytes, sessions)
